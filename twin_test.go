package udpstream

import (
	"hash/maphash"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"
)

// TestKeyTable runs random additions, takes and removals against a plain
// model: take returns the oldest entry with the key and time asked for,
// and the age list stays in order.
func TestKeyTable(t *testing.T) {
	type ent struct {
		key twinKey
		ts  int64
		ref int32
		seq int
	}
	seed := maphash.MakeSeed()
	keys := make([]twinKey, 5)
	for i := range keys {
		src := netip.AddrPortFrom(netip.MustParseAddr("192.0.2.1"), uint16(1000+i%2))
		keys[i] = makeTwinKey(seed, src, netip.MustParseAddrPort("[2001:db8::1]:53"), i, []byte{byte(i)})
	}
	rng := rand.New(rand.NewPCG(1, 2))
	const capacity = 16
	tab := newKeyTable(capacity)
	var model []ent
	slot := map[int32]int32{} // ref -> table index
	for step := range 20000 {
		switch op := rng.IntN(3); {
		case op == 0 && len(model) < capacity:
			e := ent{keys[rng.IntN(len(keys))], int64(rng.IntN(4)), int32(step), step}
			slot[e.ref] = tab.add(e.key, e.ts, 0, 0, 0, 4, e.ref)
			model = append(model, e)
		case op == 1:
			k, ts := keys[rng.IntN(len(keys))], int64(rng.IntN(4))
			want := slices.IndexFunc(model, func(e ent) bool { return e.key == k && e.ts == ts })
			got, ok := tab.take(k, ts)
			if ok != (want >= 0) || ok && got.ref != model[want].ref {
				t.Fatalf("step %d: take = %v %v, want %v", step, got.ref, ok, want)
			}
			if ok {
				model = slices.Delete(model, want, want+1)
			}
		case op == 2 && len(model) > 0:
			i := rng.IntN(len(model))
			tab.remove(slot[model[i].ref])
			model = slices.Delete(model, i, i+1)
		}
		if tab.len() != len(model) || tab.full() != (len(model) == capacity) {
			t.Fatalf("step %d: %d entries, full %v; model %d", step, tab.len(), tab.full(), len(model))
		}
		var ages []int32
		for i := tab.oldest; i >= 0; i = tab.entry(i).newer {
			ages = append(ages, tab.entry(i).ref)
		}
		var want []int32
		for _, e := range model {
			want = append(want, e.ref)
		}
		if !slices.Equal(ages, want) {
			t.Fatalf("step %d: age list %v, want %v", step, ages, want)
		}
	}
	if tab.add(keys[0], 0, 0, 0, 0, 4, 0) >= 0 == tab.full() {
		t.Fatal("add disagrees with full")
	}
}

// TestTwinKey keys a datagram as both of its sources see it: IPv4 as
// itself and as IPv4-mapped IPv6, with a zone or without, and tells
// datagrams apart by their first bytes and length.
func TestTwinKey(t *testing.T) {
	seed := maphash.MakeSeed()
	dst := netip.MustParseAddrPort("192.0.2.1:53")
	a := makeTwinKey(seed, netip.MustParseAddrPort("192.0.2.9:4000"), dst, 3, []byte("abc"))
	b := makeTwinKey(seed, netip.MustParseAddrPort("[::ffff:192.0.2.9]:4000"), netip.MustParseAddrPort("[::ffff:192.0.2.1]:53"), 3, []byte("abc"))
	if a != b {
		t.Errorf("IPv4 and IPv4-mapped keys differ: %+v %+v", a, b)
	}
	ll := netip.MustParseAddr("fe80::1")
	z := makeTwinKey(seed, netip.AddrPortFrom(ll.WithZone("eth0"), 1), dst, 0, nil)
	if z != makeTwinKey(seed, netip.AddrPortFrom(ll, 1), dst, 0, nil) {
		t.Error("a zone changes the key")
	}
	long := make([]byte, 2*twinPrefix)
	k1 := makeTwinKey(seed, dst, dst, len(long), long)
	long[len(long)-1] = 1
	if k1 != makeTwinKey(seed, dst, dst, len(long), long) {
		t.Error("bytes past the prefix change the key")
	}
	if a == makeTwinKey(seed, netip.MustParseAddrPort("192.0.2.9:4000"), dst, 3, []byte("abd")) ||
		a == makeTwinKey(seed, netip.MustParseAddrPort("192.0.2.9:4000"), dst, 4, []byte("abc")) {
		t.Error("payloads that differ share a key")
	}
}
