package main

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strconv"
	"testing"
	"time"

	"github.com/udpstream/udpstream"
)

// record is the -json line as encoding/json would write it: the
// reference appendRecord is held to. The field names and types are a contract
// that scripts parse: every key is always present except error, which only
// error lines carry. A field the stream's mode cannot see (in socket mode:
// id, df, udp_checksum, and fragments and ext_headers of a fragmented
// datagram) is null, never a made-up zero.
type record struct {
	Time        string  `json:"time"`
	IfIndex     int     `json:"ifindex"`
	IfName      string  `json:"ifname"`
	Family      int     `json:"family"`
	Src         string  `json:"src"`
	Sport       uint16  `json:"sport"`
	Dst         string  `json:"dst"`
	Dport       uint16  `json:"dport"`
	TTL         uint8   `json:"ttl"`
	TOS         uint8   `json:"tos"`
	ID          *uint32 `json:"id"`
	DF          *bool   `json:"df"`
	Flow        uint32  `json:"flow"`
	IPOptions   string  `json:"ip_options"`
	ExtHeaders  []int   `json:"ext_headers"` // []int: a []uint8 would encode as base64
	Fragments   *int    `json:"fragments"`
	UDPLen      uint16  `json:"udp_len"`
	UDPChecksum *uint16 `json:"udp_checksum"`
	Len         int     `json:"len"`
	Payload     string  `json:"payload"`
	// Added after the first release, after the others so that every
	// earlier key keeps its place in the line.
	DSCP  uint8  `json:"dscp"`
	ECN   string `json:"ecn"`  // RFC 3168 name
	HLim  *uint8 `json:"hlim"` // IPv6 hop limit; null for IPv4
	Error string `json:"error,omitempty"`
}

func newRecord(p udpstream.Packet[[]byte], ifname string) record {
	h := p.Header
	r := record{
		Time:      h.Time.UTC().Format(jsonTime),
		IfIndex:   h.IfIndex,
		IfName:    ifname,
		Family:    int(h.Version),
		Src:       h.Src.Addr().String(),
		Sport:     h.Src.Port(),
		Dst:       h.Dst.Addr().String(),
		Dport:     h.Dst.Port(),
		TTL:       h.TTL,
		TOS:       h.TOS,
		Flow:      h.FlowLabel,
		IPOptions: hex.EncodeToString(h.Options),
		UDPLen:    h.UDPLength,
		Len:       payloadLen(p),
		Payload:   hex.EncodeToString(p.Value),
		DSCP:      h.DSCP(),
		ECN:       h.ECN().String(),
	}
	if h.Version == 6 {
		r.HLim = &h.TTL
	}
	if h.Known(udpstream.FieldID) {
		r.ID = &h.ID
	}
	if h.Known(udpstream.FieldDF) {
		r.DF = &h.DF
	}
	if h.Known(udpstream.FieldFragments) {
		r.Fragments = &h.Fragments
	}
	if h.Known(udpstream.FieldUDPChecksum) {
		r.UDPChecksum = &h.UDPChecksum
	}
	if h.Known(udpstream.FieldExtHeaders) {
		r.ExtHeaders = make([]int, len(h.ExtHeaders))
		for i, x := range h.ExtHeaders {
			r.ExtHeaders[i] = int(x)
		}
	}
	if p.Err != nil {
		r.Error = p.Err.Error()
	}
	return r
}

// appendTextFmt is the readable line as fmt writes it: the reference
// appendText is held to.
func appendTextFmt(b []byte, p udpstream.Packet[[]byte], ifname string) []byte {
	h := p.Header
	if ifname == "" {
		ifname = "if" + strconv.Itoa(h.IfIndex)
	}
	route := h.Src.String() + " → " + h.Dst.String()
	// IPv6 calls it the hop limit; the wider name takes the space before
	// it, so that the IPv4 line is as it always was.
	ttl := "ttl"
	if h.Version == 6 {
		ttl = "hlim"
	}
	b = fmt.Appendf(b, "%s  %-8s IPv%d  %-45s %4s %3d  tos 0x%02x dscp %2d %-7s  %-16s  len %5d  ",
		h.Time.UTC().Format(textTime), ifname, h.Version, route,
		ttl, h.TTL, h.TOS, h.DSCP(), h.ECN(), identityFmt(h), payloadLen(p))
	if p.Err != nil {
		b = append(b, "error: "...)
		b = append(b, p.Err.Error()...)
	} else {
		b = appendPreview(b, p.Value)
	}
	return append(b, '\n')
}

// identity is the readable line's column for what tells datagrams apart
// and how they travelled: IPv4 ID and flags, or IPv6 flow label and
// fragment ID; then fragments, options and extension headers if any. A
// field the mode cannot see shows as "?".
func identityFmt(h udpstream.Header) string {
	var s string
	if h.Version == 4 {
		s = "id " + knownFmt(h, udpstream.FieldID, uint64(h.ID))
		switch {
		case !h.Known(udpstream.FieldDF):
			s += " DF?"
		case h.DF:
			s += " DF"
		}
		if h.MF {
			s += " MF"
		}
		if len(h.Options) > 0 {
			s += " opt " + hex.EncodeToString(h.Options)
		}
	} else {
		s = fmt.Sprintf("flow 0x%05x", h.FlowLabel)
		if h.ID != 0 || !h.Known(udpstream.FieldID) {
			s += " frag-id " + knownFmt(h, udpstream.FieldID, uint64(h.ID))
		}
		for i, x := range h.ExtHeaders {
			sep := ","
			if i == 0 {
				sep = " ext "
			}
			s += sep + strconv.Itoa(int(x))
		}
	}
	if h.Fragments > 1 {
		s += " frags " + knownFmt(h, udpstream.FieldFragments, uint64(h.Fragments))
	}
	return s
}

// known is v in decimal, or "?" when h's mode cannot see field f.
func knownFmt(h udpstream.Header, f udpstream.HeaderFields, v uint64) string {
	if !h.Known(f) {
		return "?"
	}
	return strconv.FormatUint(v, 10)
}

// TestAppendRecord holds appendRecord to encoding/json's encoding of the
// same record, byte for byte, over random headers, payloads and strings
// that need escaping.
func TestAppendRecord(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	names := []string{"eth0", "", "lo", "we<ird>&\"name\"", "tab\there", "\xff\xfe", "é"}
	errs := []error{nil, errors.New("udpstream: malformed packet: UDP length"), errors.New("a \"quoted\" <error>\nwith a newline"), errors.New("\x00\x7f\u2028")}
	bytesOf := func(n int) []byte {
		if n < 0 {
			return nil
		}
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(r.UintN(256))
		}
		return b
	}
	for i := range 2000 {
		h := udpstream.Header{
			Version:     4,
			TTL:         uint8(r.UintN(256)),
			TOS:         uint8(r.UintN(256)),
			ID:          r.Uint32(),
			DF:          r.UintN(2) == 0,
			FlowLabel:   r.Uint32() & 0xfffff,
			Fragments:   1 + int(r.UintN(5)),
			UDPLength:   uint16(r.UintN(65536)),
			UDPChecksum: uint16(r.UintN(65536)),
			IfIndex:     int(r.UintN(100)),
			Time:        time.Unix(int64(r.UintN(1<<31)), int64(r.UintN(1e9))),
		}
		src, dst := netip.AddrFrom4([4]byte(bytesOf(4))), netip.AddrFrom4([4]byte(bytesOf(4)))
		if r.UintN(2) == 0 {
			h.Version = 6
			src, dst = netip.AddrFrom16([16]byte(bytesOf(16))), netip.AddrFrom16([16]byte(bytesOf(16)))
			h.ExtHeaders = bytesOf(int(r.UintN(4)) - 1)
		} else {
			h.Options = bytesOf(int(r.UintN(12)) - 1)
		}
		h.Src = netip.AddrPortFrom(src, uint16(r.UintN(65536)))
		h.Dst = netip.AddrPortFrom(dst, uint16(r.UintN(65536)))
		if r.UintN(3) == 0 { // as socket mode reports
			h.Unknown = udpstream.HeaderFields(r.UintN(32))
		}
		p := udpstream.Packet[[]byte]{Header: h, Value: bytesOf(int(r.UintN(40)) - 1), Err: errs[r.UintN(uint(len(errs)))]}
		name := names[r.UintN(uint(len(names)))]
		want, err := json.Marshal(newRecord(p, name))
		if err != nil {
			t.Fatal(err)
		}
		if got := appendRecord(nil, p, name); !bytes.Equal(got, want) {
			t.Fatalf("case %d:\n got %s\nwant %s", i, got, want)
		}
	}
}

// TestAppendText holds appendText to the line fmt writes, over random
// headers, interface names and errors.
func TestAppendText(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	names := []string{"eth0", "", "lo", "wlp0s20f3-long-name", "é-ö", "br0"}
	for i := range 2000 {
		h := udpstream.Header{
			Version:   4,
			TTL:       uint8(r.UintN(256)),
			TOS:       uint8(r.UintN(256)),
			ID:        r.Uint32() >> r.UintN(32),
			DF:        r.UintN(2) == 0,
			MF:        r.UintN(4) == 0,
			FlowLabel: r.Uint32() & 0xfffff >> r.UintN(20),
			Fragments: 1 + int(r.UintN(3)),
			UDPLength: uint16(r.UintN(65536)),
			IfIndex:   int(r.UintN(1000)),
			Time:      time.Unix(int64(r.UintN(1<<31)), int64(r.UintN(1e9))),
		}
		var src, dst netip.Addr
		if r.UintN(2) == 0 {
			h.Version = 6
			src = netip.AddrFrom16([16]byte{0xfe, 0x80, 15: byte(r.UintN(256))})
			if r.UintN(2) == 0 {
				src = src.WithZone(names[r.UintN(uint(len(names)))])
			}
			dst = netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 15: byte(r.UintN(256))})
			h.ExtHeaders = []uint8{0, 43, 44, 60}[:r.UintN(5)]
		} else {
			src, dst = netip.AddrFrom4([4]byte{10, 0, byte(r.UintN(256)), 1}), netip.AddrFrom4([4]byte{192, 0, 2, byte(r.UintN(256))})
			h.Options = []byte{1, 1, 1, 0, 7, 3}[:r.UintN(7)]
		}
		h.Src = netip.AddrPortFrom(src, uint16(r.UintN(65536)))
		h.Dst = netip.AddrPortFrom(dst, uint16(r.UintN(65536)))
		if r.UintN(3) == 0 { // as socket mode reports
			h.Unknown = udpstream.HeaderFields(r.UintN(32))
		}
		p := udpstream.Packet[[]byte]{Header: h, Value: bytes.Repeat([]byte{'a', 0, '"'}, int(r.UintN(20)))}
		if r.UintN(5) == 0 {
			p.Err = errors.New("udpstream: datagram not for the listened port")
		}
		name := names[r.UintN(uint(len(names)))]
		if got, want := appendText(nil, p, name), appendTextFmt(nil, p, name); !bytes.Equal(got, want) {
			t.Fatalf("case %d:\n got %q\nwant %q", i, got, want)
		}
	}
}

// BenchmarkLine measures the cost of a line per datagram, the tool's own
// share of its work at high rates.
func BenchmarkLine(b *testing.B) {
	p := udpstream.Packet[[]byte]{Value: make([]byte, 64), Header: udpstream.Header{
		Version: 4, Src: netip.MustParseAddrPort("10.1.2.3:4000"), Dst: netip.MustParseAddrPort("10.1.2.4:53"),
		TTL: 64, ID: 4711, DF: true, Fragments: 1, UDPLength: 72, IfIndex: 1, Time: time.Now()}}
	for _, asJSON := range []bool{true, false} {
		name := "text"
		if asJSON {
			name = "json"
		}
		b.Run(name, func(b *testing.B) {
			pr := newPrinter(nil, asJSON)
			pr.names.lookup = func(int) string { return "eth0" }
			b.ReportAllocs()
			for b.Loop() {
				if _, err := pr.line(p); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
