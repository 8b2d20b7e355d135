package udpstream

import (
	"bytes"
	"encoding/binary"
	"slices"
	"testing"
)

// fuzzSeeds are frames for the classifier fuzzer to start from: valid
// packets of each shape, their truncations and lying lengths.
func fuzzSeeds() [][]byte {
	var seeds [][]byte
	for _, cs := range [][]classifyCase{ipv4Cases(), ipv6Cases(), udpCases()} {
		for _, c := range cs {
			seeds = append(seeds, c.frame)
		}
	}
	for _, src := range truncationSources() {
		for _, n := range []int{1, 19, 20, 27, 39, 40, 47, len(src.frame) - 1} {
			if n < len(src.frame) {
				seeds = append(seeds, src.frame[:n])
			}
		}
	}
	return seeds
}

// FuzzClassify feeds arbitrary frames to classify. It must not panic, and
// whatever it delivers or hands to reassembly must be consistent with the
// frame: views inside it, lengths as the headers state them, a checksum
// that verifies.
func FuzzClassify(f *testing.F) {
	for i, s := range fuzzSeeds() {
		want := uint8(0)
		if len(s) > 0 && s[0]>>4 == 6 {
			want = 1
		}
		f.Add(s, want, uint16(testPort), uint8(i%2))
	}
	f.Fuzz(func(t *testing.T, frame []byte, want uint8, port uint16, flags uint8) {
		fam := uint8(4)
		if want&1 == 1 {
			fam = 6
		}
		fl := classifyFlags(flags) & flagChecksumVouched
		orig := bytes.Clone(frame)

		var p parsed
		v := classify(frame, fam, port, fl, &p)
		if v >= dropNotLocal {
			t.Fatalf("verdict %s is not the parser's to give", verdictName(v))
		}
		if !bytes.Equal(frame, orig) {
			t.Fatal("classify wrote to the frame")
		}
		if msg := checkViews(frame, fam, port, fl, v, &p); msg != "" {
			t.Fatalf("verdict %s: %s", verdictName(v), msg)
		}
		if v != deliver && v != fragment {
			return
		}
		if fam == 4 && p.extN != 0 {
			t.Fatalf("IPv4 with extension headers %v", p.ext[:p.extN])
		}
		ttlAt := 8
		if fam == 6 {
			ttlAt = 7
		}
		if p.TTL != frame[ttlAt] {
			t.Fatalf("TTL %d does not come from the header", p.TTL)
		}

		// Link-layer padding never changes what a good packet is.
		var q parsed
		padded := append(bytes.Clone(frame), 0, 0xff, 0, 0xff, 0, 0xff)
		if w := classify(padded, fam, port, fl, &q); w != v {
			t.Fatalf("with padding: verdict %s, without %s", verdictName(w), verdictName(v))
		}
		if d := headerDiff(q.Header, p.Header); len(d) != 0 {
			t.Fatalf("with padding the header differs: %v", d)
		}
		if !slices.Equal(q.ext[:q.extN], p.ext[:p.extN]) || !bytes.Equal(q.udp, p.udp) || !bytes.Equal(q.frag.data, p.frag.data) {
			t.Fatal("with padding the views differ")
		}
	})
}

// FuzzClassifyBuilt builds well-formed datagrams from fuzzed header fields
// and checks that each is delivered with exactly those fields.
func FuzzClassifyBuilt(f *testing.F) {
	f.Add(false, uint8(0), uint8(64), uint16(1), false, uint32(0), uint8(0), uint8(0), uint16(1000), []byte("hi"))
	f.Add(false, uint8(0xb8), uint8(1), uint16(0xffff), true, uint32(0), uint8(10), uint8(0), uint16(0), []byte{})
	f.Add(true, uint8(0xff), uint8(255), uint16(0), false, uint32(0xfffff), uint8(0), uint8(3), uint16(65535), []byte("hello"))
	f.Add(true, uint8(0x01), uint8(0), uint16(0), false, uint32(0x80000), uint8(0), uint8(8), uint16(9), bytes.Repeat([]byte{0xff}, 1400))
	f.Fuzz(func(t *testing.T, isV6 bool, tos, ttl uint8, id uint16, df bool, flow uint32, optWords, nExt uint8, sport uint16, payload []byte) {
		if len(payload) > 2000 {
			payload = payload[:2000]
		}
		var (
			frame []byte
			fam   uint8
			want  Header
			ext   []uint8
		)
		if !isV6 {
			fam = 4
			h := v4()
			h.tos, h.ttl, h.id = tos, ttl, id
			if df {
				h.fo = ipv4FlagDF
			}
			// Option words are NOPs: any count up to the IHL limit.
			h.opts = bytes.Repeat([]byte{1}, 4*int(optWords%11))
			frame = h.udp(sport, testPort, payload)
			want = Header{Version: 4, Src: ap4(src4, sport), Dst: ap4(dst4, testPort), TTL: ttl, TOS: tos,
				ID: uint32(id), DF: df, Fragments: 1}
			if len(h.opts) > 0 {
				want.Options = h.opts
			}
		} else {
			fam = 6
			h := v6()
			h.tc, h.flow, h.hop = tos, flow&0xfffff, ttl
			n := int(nExt % (maxExtHeaders + 1))
			if n > 0 {
				h.exts = append(h.exts, hbh())
				ext = append(ext, nhHopByHop)
			}
			for range n - 1 {
				h.exts = append(h.exts, optsHdr(nhDestOptions, 8*(1+len(h.exts)%3)))
				ext = append(ext, nhDestOptions)
			}
			frame = h.udp(sport, testPort, payload)
			want = Header{Version: 6, Src: ap6(src6, sport), Dst: ap6(dst6, testPort), TTL: ttl, TOS: tos,
				FlowLabel: flow & 0xfffff, Fragments: 1}
		}
		want.UDPLength = uint16(8 + len(payload))
		want.UDPChecksum = binary.BigEndian.Uint16(frame[len(frame)-len(payload)-2:])

		var p parsed
		if v := classify(frame, fam, testPort, 0, &p); v != deliver {
			t.Fatalf("verdict %s, want deliver", verdictName(v))
		}
		if d := headerDiff(p.Header, want); len(d) != 0 {
			t.Fatalf("header: %v", d)
		}
		if !slices.Equal(p.ext[:p.extN], ext) {
			t.Fatalf("ext %v, want %v", p.ext[:p.extN], ext)
		}
		if !bytes.Equal(p.udp[8:], payload) {
			t.Fatal("payload differs")
		}
		if v := classify(frame, fam, testPort+1, 0, &p); v != dropOtherPort {
			t.Fatalf("to another port: verdict %s, want dropOtherPort", verdictName(v))
		}
	})
}

// FuzzChecksum compares sumLE, fold and udpChecksum with the RFC 1071
// reference on arbitrary bytes.
func FuzzChecksum(f *testing.F) {
	f.Add(uint64(0), []byte{})
	f.Add(^uint64(0), []byte{0xff})
	f.Add(uint64(0xffff), bytes.Repeat([]byte{0xff}, 61))
	f.Add(uint64(1)<<63, fixtureV6HBHDest)
	f.Fuzz(func(t *testing.T, acc uint64, b []byte) {
		if got, want := fold(sumLE(acc, b)), refSum(refAcc(acc), b); got != want {
			t.Fatalf("fold(sumLE) = %#04x, want %#04x", got, want)
		}
		// Split b into addresses and a UDP datagram when it is long enough.
		for _, alen := range []int{4, 16} {
			if len(b) < 2*alen+8 || len(b)-2*alen > 0xffff {
				continue
			}
			u := bytes.Clone(b[2*alen:])
			u[6], u[7] = 0, 0
			if got, want := udpChecksum(b[:2*alen], u), refUDPChecksum(b[:alen], b[alen:2*alen], u); got != want {
				t.Fatalf("udpChecksum over %d-byte addresses = %#04x, want %#04x", alen, got, want)
			}
		}
	})
}
