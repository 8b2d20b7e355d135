package udpstream

import (
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/udpstream/udpstream/internal/netnstest"
)

// nft runs the nft command with a ruleset on standard input, failing the
// test on error.
func nft(t *testing.T, ruleset string) {
	t.Helper()
	cmd := exec.Command("nft", "-f", "-")
	cmd.Stdin = strings.NewReader(ruleset)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft: %v: %s", err, out)
	}
}

// TestFirewall installs an nftables rule in the test's namespace that drops
// one source's datagrams to the port. Streams in socket mode and in
// kernel-verdict mode, which the kernel's verdict decides for, never
// deliver them (kernel-verdict mode counts them rejected); the ring sees
// traffic before the firewall and delivers both sources, as the README
// says.
func TestFirewall(t *testing.T) {
	if _, err := exec.LookPath("nft"); err != nil {
		netnstest.SkipOrFail(t, "the nft command (nftables) is not installed")
	}
	if !inNetns(t) {
		return
	}
	leakCheck(t)
	in := injectLink(t, "192.0.2.10/24", "2001:db8::10/64")
	for _, mode := range []Mode{ModeSocket, ModeKernel} {
		t.Run(mode.String(), func(t *testing.T) {
			owner := openT(t, 0, Payload, WithMode(mode))
			port := owner.Port()
			ring := openT(t, port, Payload, WithMonitor())
			nft(t, fmt.Sprintf(`table inet udpstream_test {
	chain input {
		type filter hook input priority 0; policy accept;
		ip saddr 192.0.2.99 udp dport %[1]d drop
		ip6 saddr 2001:db8::99 udp dport %[1]d drop
	}
}
`, port))
			t.Cleanup(func() { nft(t, "delete table inet udpstream_test\n") })

			h4 := v4()
			h4.dst = netip.MustParseAddr("192.0.2.10").As4()
			h6 := v6()
			h6.dst = netip.MustParseAddr("2001:db8::10").As16()
			for _, src := range []string{"192.0.2.99", "192.0.2.98", "2001:db8::99", "2001:db8::98"} {
				a := netip.MustParseAddr(src)
				payload := []byte("from " + src)
				if a.Is4() {
					h4.src = a.As4()
					in.send(t, h4.udp(4000, port, payload))
				} else {
					h6.src = a.As16()
					in.send(t, h6.udp(4000, port, payload))
				}
			}

			collect := func(s *Stream[[]byte], n int) map[string]bool {
				got := map[string]bool{}
				for range n {
					p := recvOne(t, s.Packets(), 2*time.Second)
					if p.Err != nil {
						t.Fatalf("packet error: %v", p.Err)
					}
					got[string(p.Value)] = true
				}
				expectNone(t, s.Packets(), 200*time.Millisecond)
				return got
			}
			if got := collect(ring, 4); len(got) != 4 {
				t.Errorf("ring mode delivered %v, want all four sources: it sees traffic before the firewall", got)
			}
			got := collect(owner, 2)
			if !got["from 192.0.2.98"] || !got["from 2001:db8::98"] {
				t.Errorf("%v mode delivered %v, want the two sources the firewall lets through", mode, got)
			}
			// (The link's own multicast listener reports may count as
			// not UDP: they pass the kernel filter behind a Hop-by-Hop
			// header.)
			st := settled(t, owner)
			rejected := uint64(0)
			if mode == ModeKernel {
				rejected = 2
			}
			if st.Delivered != 2 || st.Rejected != rejected || st.Dropped()-st.NotUDP != rejected || st.SocketOnly != 0 {
				t.Errorf("%v mode stats %+v, want 2 delivered and %d rejected", mode, st, rejected)
			}
		})
	}
}
