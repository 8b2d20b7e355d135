package udpstream

import (
	"bytes"
	"encoding/binary"
	"testing"
)

// superPacket turns a built datagram into what a UDP_SEGMENT sender hands
// the device: the checksum field holds the pseudo-header sum (not yet
// complemented), the payload's part left to the device.
func superPacket(t testing.TB, frame []byte) []byte {
	t.Helper()
	var p parsed
	if v := classify(frame, frame[0]>>4, testPort, 0, &p); v != deliver {
		t.Fatalf("built frame: %s", verdictName(v))
	}
	binary.BigEndian.PutUint16(p.udp[6:], partialSum(frame, len(p.udp)))
	return frame
}

// partialSum is the folded pseudo-header sum for a UDP length, computed
// with the reference summer.
func partialSum(frame []byte, udpLen int) uint16 {
	if frame[0]>>4 == 4 {
		return refPseudoSum(frame[12:16], frame[16:20], udpLen)
	}
	return refPseudoSum(frame[8:24], frame[24:40], udpLen)
}

// checkSegments splits super into segments of size and checks each against
// what the kernel would hand a UDP socket.
func checkSegments(t *testing.T, super []byte, size int) int {
	t.Helper()
	fam := super[0] >> 4
	var p parsed
	if v := classify(super, fam, testPort, flagChecksumVouched, &p); v != deliver {
		t.Fatalf("super-packet: %s", verdictName(v))
	}
	whole := p.Header
	hdr := bytes.Clone(p.ip[:len(p.ip)-len(p.l4)])
	udp := bytes.Clone(p.udp)
	payload := udp[8:]
	partial := binary.BigEndian.Uint16(udp[6:]) == partialSum(super, len(udp))
	var joined []byte
	buf := make([]byte, 1<<16)
	n := 0
	for i := 0; ; i++ {
		seg := gsoSegment(buf, hdr, udp, size, i)
		if seg == nil {
			break
		}
		n++
		var q parsed
		if v := classify(seg, fam, testPort, flagChecksumVouched, &q); v != deliver {
			t.Fatalf("segment %d: %s", i, verdictName(v))
		}
		part := q.udp[8:]
		if i < (len(payload)-1)/size && len(part) != size {
			t.Fatalf("segment %d: %d bytes, want %d", i, len(part), size)
		}
		joined = append(joined, part...)
		if fam == 4 && q.ID != (whole.ID+uint32(i))&0xffff {
			t.Errorf("segment %d: IPv4 ID %#x, want %#x", i, q.ID, whole.ID+uint32(i))
		}
		if q.Src != whole.Src || q.Dst != whole.Dst || q.TTL != whole.TTL || q.TOS != whole.TOS ||
			q.DF != whole.DF || q.FlowLabel != whole.FlowLabel || !bytes.Equal(q.Options, whole.Options) {
			t.Errorf("segment %d: header %+v, want the super-packet's %+v", i, q.Header, whole)
		}
		if got, want := q.UDPChecksum, partialSum(seg, len(q.udp)); partial && got != want {
			t.Errorf("segment %d: checksum field %#04x, want the pseudo-header sum %#04x", i, got, want)
		}
	}
	if !bytes.Equal(joined, payload) {
		t.Fatalf("segments carry %d bytes that differ from the %d-byte payload", len(joined), len(payload))
	}
	if want := (len(payload) + size - 1) / size; n != want {
		t.Fatalf("%d segments, want %d", n, want)
	}
	return n
}

func TestGSOSegment(t *testing.T) {
	opts := v4()
	opts.opts = []byte{1, 1, 1, 0} // NOPs, end of list
	opts.fo = ipv4FlagDF
	wrap := v4()
	wrap.id = 0xfffe // the ID wraps
	cases := []struct {
		name  string
		frame []byte
		size  int
		n     int
	}{
		{"v4", v4().udp(4000, testPort, payloadOf(2500)), 1000, 3},
		{"v4 options", opts.udp(4000, testPort, payloadOf(3000)), 1000, 3},
		{"v4 id wraps", wrap.udp(4000, testPort, payloadOf(40)), 8, 5},
		{"v4 one segment", v4().udp(4000, testPort, payloadOf(700)), 1000, 1},
		{"v6", v6().udp(4000, testPort, payloadOf(4001)), 1200, 4},
		{"v6 extension headers", v6(hbh(), destOpts()).udp(4000, testPort, payloadOf(64*9)), 64, 9},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if n := checkSegments(t, superPacket(t, c.frame), c.size); n != c.n {
				t.Fatalf("%d segments, want %d", n, c.n)
			}
		})
	}
}

func TestGSOSegmentRejects(t *testing.T) {
	frame := v4().udp(4000, testPort, payloadOf(100))
	hdr, udp := frame[:20], frame[20:]
	buf := make([]byte, 1<<16)
	for _, c := range []struct {
		name     string
		dst      []byte
		hdr, udp []byte
		size, i  int
	}{
		{"size 0", buf, hdr, udp, 0, 0},
		{"negative index", buf, hdr, udp, 10, -1},
		{"past the end", buf, hdr, udp, 10, 10},
		{"short buffer", buf[:50], hdr, udp, 40, 0},
		{"short UDP header", buf, hdr, udp[:7], 10, 0},
		{"no IP header", buf, nil, udp, 10, 0},
		{"short IPv4 header", buf, hdr[:19], udp, 10, 0},
		{"not IP", buf, append([]byte{0x50}, hdr[1:]...), udp, 10, 0},
		{"huge index", buf, hdr, udp, 1 << 40, 1 << 40},
	} {
		if seg := gsoSegment(c.dst, c.hdr, c.udp, c.size, c.i); seg != nil {
			t.Errorf("%s: got a %d-byte segment", c.name, len(seg))
		}
	}
}

func TestGSOCount(t *testing.T) {
	v4opts := v4()
	v4opts.opts = make([]byte, 8)
	for _, c := range []struct {
		name        string
		head        []byte
		ipLen, size int
		want        int
	}{
		{"plain", v4().udp(4000, testPort, payloadOf(100)), 128, 0, 1},
		{"other GSO", v4().udp(4000, testPort, payloadOf(100)), 128, -1, 1},
		{"v4 3 segments", v4().udp(4000, testPort, payloadOf(100))[:40], 20 + 8 + 2500, 1000, 3},
		{"v4 exact", v4().udp(4000, testPort, nil), 20 + 8 + 3000, 1000, 3},
		{"v4 options", v4opts.udp(4000, testPort, nil), 28 + 8 + 3001, 1000, 4},
		{"v6", v6().udp(4000, testPort, nil), 40 + 8 + 3600, 1200, 3},
		{"v6 extension headers", v6(hbh(), optsHdr(nhDestOptions, 24)).udp(4000, testPort, nil), 40 + 32 + 8 + 64*9, 64, 9},
		{"one segment", v6().udp(4000, testPort, nil), 40 + 8 + 700, 1200, 1},
		{"capped", v4().udp(4000, testPort, nil), 65535, 1, gsoMaxSegments},
		{"empty head", nil, 3000, 1000, 1},
		{"not IP", []byte{0x50}, 3000, 1000, 1},
		{"length below the headers", v4().udp(4000, testPort, nil), 10, 1000, 1},
	} {
		if got := gsoCount(c.head, c.ipLen, c.size); got != c.want {
			t.Errorf("%s: %d, want %d", c.name, got, c.want)
		}
	}
}

func TestParseVnetHdr(t *testing.T) {
	h := func(gsoType uint8, size uint16) []byte {
		b := make([]byte, vnetHdrLen)
		b[1] = gsoType
		binary.NativeEndian.PutUint16(b[4:], size)
		return b
	}
	for _, c := range []struct {
		name string
		hdr  []byte
		want int
	}{
		{"none", h(vnetGSONone, 0), 0},
		{"none with a stray size", h(vnetGSONone, 1400), 0},
		{"UDP L4", h(vnetGSOUDPL4, 1400), 1400},
		{"UDP L4 with ECN", h(vnetGSOUDPL4|vnetGSOECN, 1200), 1200},
		{"UDP L4 size 0", h(vnetGSOUDPL4, 0), -1},
		{"TCPv4", h(1, 1448), -1},
		{"UFO", h(3, 1472), -1},
		{"TCPv6", h(4, 1428), -1},
		{"short", h(vnetGSOUDPL4, 1400)[:5], -1},
	} {
		if got := parseVnetHdr(c.hdr); got != c.want {
			t.Errorf("%s: %d, want %d", c.name, got, c.want)
		}
	}
}

// FuzzGSO splits arbitrary frames: nothing may panic, and a frame the
// parser delivers splits into datagrams it delivers, whose payloads join
// up to the original.
func FuzzGSO(f *testing.F) {
	f.Add(v4().udp(4000, testPort, payloadOf(2500)), uint16(1000))
	f.Add(v6(hbh()).udp(4000, testPort, payloadOf(300)), uint16(7))
	f.Add(v4().udp(4000, testPort, nil), uint16(1))
	f.Add([]byte{0x45}, uint16(3))
	f.Fuzz(func(t *testing.T, frame []byte, size uint16) {
		buf := make([]byte, 1<<16)
		if len(frame) > 0 {
			// Whatever the bytes, as header and UDP part.
			cut := int(size) % len(frame)
			for i := range 3 {
				_ = gsoSegment(buf, frame[:cut], frame[cut:], int(size), i)
			}
		}
		if len(frame) == 0 || size == 0 {
			return
		}
		var p parsed
		if classify(frame, frame[0]>>4, testPort, flagChecksumVouched, &p) != deliver || len(p.udp) == 8 {
			return
		}
		// As a sender's device would get it; p.udp is a view of frame.
		binary.BigEndian.PutUint16(p.udp[6:], partialSum(frame, len(p.udp)))
		// At most 64 segments (the kernel's own limit), so that each run
		// stays short.
		seg := max(int(size), (len(p.udp)-8+63)/64)
		n := checkSegments(t, frame, seg)
		// What the drop count would say of it, from its first bytes.
		// (A super-packet's IP and UDP lengths agree; these may not.)
		ipLen := len(p.ip) - len(p.l4) + len(p.udp)
		if got := gsoCount(frame[:min(len(frame), 512)], ipLen, seg); got != min(n, gsoMaxSegments) {
			t.Fatalf("gsoCount %d for %d segments", got, n)
		}
	})
}
