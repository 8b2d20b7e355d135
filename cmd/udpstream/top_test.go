package main

import (
	"fmt"
	"net/netip"
	"regexp"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/udpstream/udpstream"
)

// escapes matches the view's ANSI sequences.
var escapes = regexp.MustCompile("\x1b\\[[0-9;?]*[A-Za-z]")

// screenLines is the view as a terminal shows it, one string per line.
func screenLines(b []byte) []string {
	return strings.Split(escapes.ReplaceAllString(string(b), ""), "\r\n")
}

func TestTopRender(t *testing.T) {
	v := newTopView(5353, testHeader().Time)
	h := func(src string, ttl, tos uint8) udpstream.Header {
		hd := testHeader()
		hd.Src = netip.AddrPortFrom(netip.MustParseAddr(src), 1000)
		hd.TTL, hd.TOS = ttl, tos
		return hd
	}
	for range 3 {
		v.add(h("192.0.2.1", 64, 0x00))
	}
	v.add(h("192.0.2.1", 50, 0x03)) // a second TTL for one source: spoofing?
	v.add(h("2001:db8:aaaa:bbbb:cccc:dddd:eeee:ffff", 7, 0x02))
	v.add(h("fe80::1%eth0", 255, 0x01))
	v.add(h("fe80::1%eth1", 255, 0x01)) // the same address on another link: one row
	v.tick(testHeader().Time.Add(topRefresh))

	st := udpstream.Stats{OtherPort: 2, KernelDrops: 5}
	lines := screenLines(v.render(nil, st, 24))
	if len(lines) != 24 {
		t.Errorf("%d lines, want 24", len(lines))
	}
	for i, l := range lines {
		if n := utf8.RuneCountInString(l); n > topWidth {
			t.Errorf("line %d is %d wide: %q", i, n, l)
		}
	}
	screen := strings.Join(lines, "\n")
	for _, want := range []*regexp.Regexp{
		regexp.MustCompile(`(?m)^192\.0\.2\.1 +4 +4 +50-64 +64 N..C !$`),
		regexp.MustCompile(`(?m)^2001:db8:aaaa:bbbb:cccc:dddd:eeee:ffff +1 +1 +7 +7 \.\.0\.$`),
		regexp.MustCompile(`(?m)^fe80::1 +2 +2 +255 +255 \.1\.\.$`),
		regexp.MustCompile(`(?m)^! TTL varies for 1 source`),
		regexp.MustCompile(`(?m)^dropped 2, by the kernel 5$`),
		regexp.MustCompile(`(?m)^2 to another port$`),
	} {
		if !want.MatchString(screen) {
			t.Errorf("screen does not match %s:\n%s", want, screen)
		}
	}

	// More sources than rows: the busiest shown, the rest counted.
	for i := range 40 {
		v.add(h(fmt.Sprintf("198.51.100.%d", i), 64, 0))
	}
	lines = screenLines(v.render(nil, st, 24))
	screen = strings.Join(lines, "\n")
	if len(lines) != 24 || !strings.Contains(screen, "192.0.2.1 ") || !strings.Contains(screen, "… and 25 more sources") {
		t.Errorf("with 43 sources, 24 lines:\n%s", screen)
	}
}
