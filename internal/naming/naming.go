// Package naming holds the one rule for the names Stagecoach builds keys
// and identities from (job ids, worker names): 1 to MaxLen characters from
// [A-Za-z0-9._-], not "." or "..". Such a name cannot escape an etcd
// prefix or a directory, and '/' separates names unambiguously in etcd
// keys and certificate identities. internal/etcdx and internal/tlsx both
// validate with it, so a name one accepts the other does too.
package naming

import "fmt"

// MaxLen bounds a name so keys and certificate fields stay short.
const MaxLen = 64

// Validate reports why s is not a usable name; what says which name it
// is ("job id", "worker name") in the error.
func Validate(what, s string) error {
	if s == "" || len(s) > MaxLen {
		return fmt.Errorf("%s %q: want 1 to %d characters", what, s, MaxLen)
	}
	if s == "." || s == ".." {
		return fmt.Errorf("%s %q is reserved", what, s)
	}
	for i, r := range s {
		ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.'
		if !ok {
			return fmt.Errorf("%s %q: character %q at %d is not one of [A-Za-z0-9._-]", what, s, r, i)
		}
	}
	return nil
}
