package udpstream

import (
	"testing"
	"time"
)

// TestReassemblyDefaults checks that WithReassembly keeps the default of
// every zero argument and sets the others.
func TestReassemblyDefaults(t *testing.T) {
	c := defaultConfig()
	if err := WithReassembly(0, 0, 0, 0).apply(&c); err != nil {
		t.Fatal(err)
	}
	if c.reasmTimeout != DefaultReassemblyTimeout || c.reasmMemory != DefaultReassemblyMemory ||
		c.reasmFragments != DefaultMaxFragments || c.reasmPerSource != DefaultMaxPerSource {
		t.Fatalf("zero arguments changed the defaults: %+v", c)
	}
	if err := WithReassembly(5*time.Second, 0, 100, 0).apply(&c); err != nil {
		t.Fatal(err)
	}
	if c.reasmTimeout != 5*time.Second || c.reasmFragments != 100 || c.reasmMemory != DefaultReassemblyMemory {
		t.Fatalf("partial setting: %+v", c)
	}
}
