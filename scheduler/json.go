package scheduler

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

// MaxPlanBytes bounds the JSON a decoder reads.
const MaxPlanBytes = 1 << 30

// Encode writes p as indented JSON. The output is stable: the same plan
// always gives the same bytes.
func Encode(w io.Writer, p *Plan) error {
	b, err := json.MarshalIndent(p, "", " ")
	if err != nil {
		return fmt.Errorf("encode plan: %w", err)
	}
	b = append(b, '\n')
	_, err = w.Write(b)
	return err
}

// Decode reads a JSON plan, refusing unknown fields, trailing data and
// inputs over MaxPlanBytes, and validates it.
func Decode(r io.Reader) (*Plan, error) {
	data, err := io.ReadAll(io.LimitReader(r, MaxPlanBytes+1))
	if err != nil {
		return nil, fmt.Errorf("read plan: %w", err)
	}
	if len(data) > MaxPlanBytes {
		return nil, fmt.Errorf("plan is larger than %d bytes", MaxPlanBytes)
	}
	return DecodeBytes(data)
}

// DecodeBytes is Decode over a byte slice.
func DecodeBytes(data []byte) (*Plan, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var p Plan
	if err := dec.Decode(&p); err != nil {
		var se *json.SyntaxError
		var te *json.UnmarshalTypeError
		switch {
		case errors.As(err, &se):
			return nil, fmt.Errorf("plan JSON: syntax error at byte %d: %v", se.Offset, err)
		case errors.As(err, &te):
			return nil, fmt.Errorf("plan JSON: field %q: %v", te.Field, err)
		}
		return nil, fmt.Errorf("plan JSON: %w", err)
	}
	if dec.More() {
		return nil, errors.New("plan JSON: trailing data after the plan object")
	}
	if err := Validate(&p); err != nil {
		return nil, err
	}
	return &p, nil
}
