package etcdx

import (
	"context"
	"errors"
	"fmt"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// TestPutCappedKeepsNewest writes more records than the cap and checks
// that etcd keeps exactly the newest ones, that rewriting a kept record
// deletes nothing, and that a deposed leader's capped write is refused.
func TestPutCappedKeepsNewest(t *testing.T) {
	cli := startEtcd(t)
	ctx := context.Background()
	k := mustKeys(t, "capped")
	s, err := NewSession(ctx, cli, testTTL)
	if err != nil {
		t.Fatal(err)
	}
	l, err := Campaign(ctx, s, k, "a")
	if err != nil {
		t.Fatal(err)
	}
	const keep = 4
	for i := int64(1); i <= 10; i++ {
		if err := l.PutCapped(ctx, k.RecoveriesPrefix(), k.Recovery(i), map[string]int64{"n": i}, keep); err != nil {
			t.Fatal(err)
		}
	}
	list := func() []string {
		resp, err := cli.Get(ctx, k.RecoveriesPrefix(), clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend))
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, kv := range resp.Kvs {
			out = append(out, string(kv.Value))
		}
		return out
	}
	want := fmt.Sprint([]string{`{"n":7}`, `{"n":8}`, `{"n":9}`, `{"n":10}`})
	if got := fmt.Sprint(list()); got != want {
		t.Fatalf("kept %s, want %s", got, want)
	}
	// A rewrite of a kept record (the same key) keeps all four.
	if err := l.PutCapped(ctx, k.RecoveriesPrefix(), k.Recovery(9), map[string]int64{"n": 90}, keep); err != nil {
		t.Fatal(err)
	}
	if got := list(); len(got) != keep || got[2] != `{"n":90}` {
		t.Fatalf("after rewriting record 9: %v", got)
	}
	if err := l.PutCapped(ctx, k.RecoveriesPrefix(), k.Plan(1), 1, keep); err == nil {
		t.Error("a key outside the prefix was written")
	}
	if err := l.Resign(ctx); err != nil {
		t.Fatal(err)
	}
	if err := l.PutCapped(ctx, k.RecoveriesPrefix(), k.Recovery(11), 1, keep); !errors.Is(err, ErrDeposed) {
		t.Fatalf("write after resigning: %v, want ErrDeposed", err)
	}
}
