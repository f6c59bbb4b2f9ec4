package scheduler

import (
	"bytes"
	"testing"
)

// samePlanJSON reports whether a and b encode to the same JSON.
func samePlanJSON(t *testing.T, a, b *Plan) bool {
	t.Helper()
	var x, y bytes.Buffer
	if err := Encode(&x, a); err != nil {
		t.Fatal(err)
	}
	if err := Encode(&y, b); err != nil {
		t.Fatal(err)
	}
	return bytes.Equal(x.Bytes(), y.Bytes())
}

// itoa spells a non-negative n in decimal.
func itoa(n int) string {
	if n == 0 {
		return "0"
	}
	s := ""
	for ; n > 0; n /= 10 {
		s = string(rune('0'+n%10)) + s
	}
	return s
}
