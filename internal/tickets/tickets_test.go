package tickets

import "testing"

// TestRing: a tenant keeps its keys until rotated; a rotation puts a new
// key first and keeps Keep in all; Encode and Decode agree; Forget drops.
func TestRing(t *testing.T) {
	r := NewRing()
	a := r.For([]string{"a", "b"})
	if again := r.For([]string{"a"}); again.Tenants["a"][0] != a.Tenants["a"][0] {
		t.Fatal("a's key changed without a rotation")
	}
	if a.Tenants["a"][0] == a.Tenants["b"][0] {
		t.Fatal("two tenants share a key")
	}
	for i := 0; i < Keep+2; i++ {
		prev := r.For([]string{"a"}).Tenants["a"]
		r.Rotate()
		next := r.For([]string{"a"}).Tenants["a"]
		if next[0] == prev[0] || next[1] != prev[0] {
			t.Fatalf("rotation %d: the new key is not first, or the last current one not second", i)
		}
		if want := min(i+2, Keep); len(next) != want {
			t.Fatalf("rotation %d: %d keys, want %d", i, len(next), want)
		}
	}
	k, err := Decode(r.For([]string{"a", "b"}).Encode())
	if err != nil || len(k.Tenants) != 2 || len(k.Tenants["a"]) != Keep {
		t.Fatalf("decode: %v %v", k, err)
	}
	if _, err := Decode([]byte(`{"version":9}`)); err == nil {
		t.Fatal("another version decoded")
	}
	r.Forget([]string{"b"})
	if got := r.For([]string{"a"}).Tenants["a"]; len(got) != 1 {
		t.Fatalf("a forgotten: %d keys, want a fresh 1", len(got))
	}
}
