package udpstream

import (
	"bytes"
	"encoding/binary"
	"math/rand/v2"
	"net/netip"
)

// The generator of the differential test (difftest_linux_test.go): seeded
// cases, each one datagram as the frames that carry it, valid or mutated.
// It knows nothing of the library; the kernel is the judge.

// Addresses of the differential test's link. The receiving end holds
// diffLocal4 and diffLocal6; senders are other hosts of the same subnets.
var (
	diffLocal4  = netip.MustParseAddr("192.0.2.10")
	diffLocal6  = netip.MustParseAddr("2001:db8::10")
	diffPrefix4 = "192.0.2.10/24"
	diffPrefix6 = "2001:db8::10/64"
)

// Multicast groups another socket of the test joins: on the link, and on
// lo only (so not on the link).
var (
	diffJoined4   = netip.MustParseAddr("239.1.2.3")
	diffJoined6   = netip.MustParseAddr("ff12::db8:1")
	diffJoinedLo4 = netip.MustParseAddr("239.9.9.9")
	diffJoinedLo6 = netip.MustParseAddr("ff05::db8:2")
)

// Link-layer destinations of a frame.
const (
	linkHost      = iota // the receiving interface's own MAC
	linkBroadcast        // ff:ff:ff:ff:ff:ff
	linkMulticast        // the MAC of the IP multicast destination
	linkOther            // another host's MAC
)

// diffFrame is one frame: an IP packet (with any link-layer padding) and
// where on the link it is sent.
type diffFrame struct {
	ip   []byte
	link int
}

// diffCase is one datagram of the test: the frames that carry it and the
// category its differences are reported under.
type diffCase struct {
	id     uint32
	cat    string
	frames []diffFrame
}

// size is the bytes the case puts on the wire, for picking the smallest
// example of a difference.
func (c *diffCase) size() int {
	n := 0
	for _, f := range c.frames {
		n += len(f.ip)
	}
	return n
}

// diffMagic starts every generated payload; the id follows it.
var diffMagic = [4]byte{'d', 'i', 'f', 'f'}

// diffTag returns the id of a payload that starts with a tag.
func diffTag(payload []byte) (uint32, bool) {
	if len(payload) < 8 || !bytes.Equal(payload[:4], diffMagic[:]) {
		return 0, false
	}
	return binary.BigEndian.Uint32(payload[4:]), true
}

// diffGen makes the cases of one seed.
type diffGen struct {
	r    *rand.Rand
	port uint16
	id   uint32
	fams []int // the IP versions to make datagrams of
	// idBase offsets the IPv4 IDs, so that the seeds of one run use
	// different ones: a datagram a seed left incomplete lives on for the
	// reassembly timeout, and one of a later seed with its source and
	// ID would meet its fragments.
	idBase uint32
	// solicitedLL is the solicited-node group of the receiving end's
	// link-local address, if known.
	solicitedLL netip.Addr
}

func newDiffGen(seed uint64, port uint16, fams []int) *diffGen {
	return &diffGen{r: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), port: port, fams: fams}
}

func (g *diffGen) intn(n int) int    { return g.r.IntN(n) }
func (g *diffGen) chance(p int) bool { return g.r.IntN(100) < p }
func (g *diffGen) byte() byte        { return byte(g.r.Uint32()) }

// payload is a tagged payload of a random length up to max bytes (at least
// the tag).
func (g *diffGen) payload(max int) []byte {
	n := 8 + g.intn(max-7)
	b := make([]byte, n)
	copy(b, diffMagic[:])
	binary.BigEndian.PutUint32(b[4:], g.id)
	for i := 8; i < n; i++ {
		b[i] = g.byte()
	}
	return b
}

func (g *diffGen) src4() [4]byte { return [4]byte{192, 0, 2, byte(20 + g.intn(200))} }
func (g *diffGen) src6() [16]byte {
	a := netip.MustParseAddr("2001:db8::").As16()
	a[14], a[15] = 1, byte(20+g.intn(200))
	return a
}

// next returns the next case: about half valid, half mutated.
func (g *diffGen) next() diffCase {
	g.id++
	c := diffCase{id: g.id}
	v6 := g.chance(50)
	if len(g.fams) == 1 {
		v6 = g.fams[0] == 6
	}
	frag := g.chance(20)
	var h4 ip4
	var h6 ip6
	if v6 {
		h6 = ip6{tc: g.byte(), flow: g.r.Uint32() & 0xfffff, hop: g.byte(), src: g.src6(), dst: diffLocal6.As16()}
		if g.chance(30) {
			h6.exts = g.extChain()
		}
	} else {
		h4 = ip4{tos: g.byte(), ttl: g.byte(), id: uint16(g.idBase + g.id), src: g.src4(), dst: diffLocal4.As4()}
		if g.chance(50) {
			h4.fo = ipv4FlagDF
		}
		if g.chance(20) {
			h4.opts = g.options4()
		}
	}
	max := 600
	if frag {
		max = 2400
	}
	pl := g.payload(max)
	sport := uint16(1024 + g.intn(60000))

	c.cat = "valid"
	mutate := g.chance(55)
	var m mutation
	if mutate {
		for m = mutations[g.intn(len(mutations))]; m.family != 0 && (m.family == 6) != v6; {
			m = mutations[g.intn(len(mutations))]
		}
		c.cat = m.name
		if m.pre != nil {
			m.pre(g, &h4, &h6, &pl, &sport)
		}
	}
	var pkt []byte
	if v6 {
		pkt = h6.udp(sport, g.port, pl)
		c.cat = "ipv6 " + c.cat
	} else {
		pkt = h4.udp(sport, g.port, pl)
		c.cat = "ipv4 " + c.cat
	}
	link := linkHost
	if mutate && m.post != nil {
		link = m.post(g, &pkt)
	}
	if frag && (!mutate || m.fragOK) {
		c.cat += " fragmented"
		c.frames = g.fragments(pkt, link, &c.cat)
		return c
	}
	if g.chance(10) {
		pkt = padded(pkt, 1+g.intn(20), g.byte()) // Ethernet padding
	}
	c.frames = []diffFrame{{pkt, link}}
	return c
}

// options4 is a list of valid IPv4 options, padded to a multiple of 4.
func (g *diffGen) options4() []byte {
	var o []byte
	seen := map[int]bool{}
	for range 1 + g.intn(3) {
		k := g.intn(5)
		if seen[k] && k != 0 && k != 4 {
			continue // the kernel refuses most options twice
		}
		seen[k] = true
		switch k {
		case 0:
			o = append(o, 1) // NOP
		case 1: // Record Route with room for n addresses, k recorded
			n := 1 + g.intn(3)
			k := g.intn(n + 1)
			o = append(o, 7, byte(3+4*n), byte(4+4*k))
			o = append(o, make([]byte, 4*n)...)
		case 2: // Timestamp, timestamps only
			n := 1 + g.intn(3)
			o = append(o, 68, byte(4+4*n), 5, 0)
			o = append(o, make([]byte, 4*n)...)
		case 3: // Router Alert
			o = append(o, 148, 4, 0, 0)
		case 4: // an option the kernel ignores
			o = append(o, 0x1e, 4, g.byte(), g.byte())
		}
	}
	for len(o)%4 != 0 {
		o = append(o, 0)
	}
	if len(o) > 40 {
		o = o[:0]
	}
	return o
}

// extChain is a valid chain of IPv6 extension headers.
func (g *diffGen) extChain() []extHdr {
	var e []extHdr
	if g.chance(50) {
		e = append(e, g.optsHdr(nhHopByHop))
	}
	if g.chance(40) {
		e = append(e, g.optsHdr(nhDestOptions))
	}
	if g.chance(30) {
		e = append(e, extHdr{nhRouting, []byte{0, 0, byte(g.intn(2)), 0, 0, 0, 0, 0}}) // type 0 or 1, done
	}
	if g.chance(20) {
		e = append(e, fragHdr(0, false, g.r.Uint32())) // atomic fragment
	}
	if g.chance(40) {
		e = append(e, g.optsHdr(nhDestOptions))
	}
	return e
}

// optsHdr is an options header of valid padding and ignorable options.
func (g *diffGen) optsHdr(typ uint8) extHdr {
	b := []byte{0, 0}
	for range g.intn(3) {
		b = append(b, 0x1e, 2, g.byte(), g.byte()) // unknown, skip
	}
	for len(b)%8 != 0 {
		if n := 8 - len(b)%8; n >= 2 && g.chance(70) {
			b = append(b, 1, byte(n-2))
			b = append(b, make([]byte, n-2)...)
		} else {
			b = append(b, 0)
		}
	}
	b[1] = byte(len(b)/8 - 1)
	return extHdr{typ, b}
}

// fragments cuts pkt into fragments and shuffles them, sometimes with a
// duplicate, an overlap, a gap or an ECN mix.
func (g *diffGen) fragments(pkt []byte, link int, cat *string) []diffFrame {
	// Mostly few enough fragments for the kernel's and the stream's
	// limits, now and then more than 64.
	n := len(pkt) - 40
	size := 8 * (1 + g.intn(100))
	if n/size > 40 && !g.chance(5) {
		size = (n/40 + 7) &^ 7
	}
	var frags [][]byte
	if pkt[0]>>4 == 4 {
		frags = fragment4(pkt, size)
	} else {
		frags = fragment6(pkt, size, g.r.Uint32())
	}
	if len(frags) > 1 {
		switch g.intn(11) {
		case 0:
			*cat += ", duplicate"
			frags = append(frags, frags[g.intn(len(frags))])
		case 1:
			*cat += ", gap"
			i := g.intn(len(frags))
			frags = append(frags[:i], frags[i+1:]...)
		case 2:
			*cat += ", ecn mix"
			for _, f := range frags {
				setECN(f, g.byte()&3)
			}
		case 3:
			*cat += ", ce"
			setECN(frags[g.intn(len(frags))], 3)
		case 4:
			*cat += ", empty fragment"
			frags = append(frags, emptyFragment(frags[g.intn(len(frags))]))
		case 5:
			// A non-last fragment that runs 1 to 7 bytes into the next
			// one, with the same bytes.
			*cat += ", unaligned"
			i := g.intn(len(frags) - 1)
			frags[i] = unalign(pkt, frags[i], 1+g.intn(7))
		}
	}
	if len(frags) > DefaultMaxFragments {
		*cat += ", over 64 fragments"
	}
	g.r.Shuffle(len(frags), func(i, j int) { frags[i], frags[j] = frags[j], frags[i] })
	out := make([]diffFrame, len(frags))
	for i, f := range frags {
		out[i] = diffFrame{f, link}
	}
	return out
}

// emptyFragment is fragment f with its data removed.
func emptyFragment(f []byte) []byte {
	e := bytes.Clone(f[:len(f)-len(fragData(f))])
	if is6(e) {
		binary.BigEndian.PutUint16(e[4:], uint16(len(e)-ipv6HeaderLen))
	} else {
		binary.BigEndian.PutUint16(e[2:], uint16(len(e)))
		reseal4(e)
	}
	return e
}

// fragData returns the data of a fragment the generator made.
func fragData(f []byte) []byte {
	if !is6(f) {
		return f[int(f[0]&0xf)*4:]
	}
	off, nh := ipv6HeaderLen, f[6]
	for nh != nhFragment {
		nh = f[off]
		off += (int(f[off+1]) + 1) * 8
	}
	return f[off+8:]
}

// unalign extends a non-last fragment f of datagram pkt by n bytes of
// the data that follows it.
func unalign(pkt, f []byte, n int) []byte {
	data := fragData(f)
	var off int
	var whole []byte
	if is6(f) {
		fh := f[len(f)-len(data)-8:]
		off = int(binary.BigEndian.Uint16(fh[2:]) &^ 7)
		whole = pkt[len(f)-len(data)-8:]
	} else {
		off = int(binary.BigEndian.Uint16(f[6:])&ipv4OffsetMask) * 8
		whole = pkt[int(pkt[0]&0xf)*4:]
	}
	end := min(off+len(data)+n, len(whole))
	g := append(bytes.Clone(f[:len(f)-len(data)]), whole[off:end]...)
	if is6(g) {
		binary.BigEndian.PutUint16(g[4:], uint16(len(g)-ipv6HeaderLen))
	} else {
		binary.BigEndian.PutUint16(g[2:], uint16(len(g)))
		reseal4(g)
	}
	return g
}

// setECN sets the ECN bits of an IP packet.
func setECN(b []byte, ecn byte) {
	if b[0]>>4 == 4 {
		b[1] = b[1]&^3 | ecn
		reseal4(b)
		return
	}
	b[1] = b[1]&^0x30 | ecn<<4
}

// fragment4 cuts an IPv4 datagram into fragments of size bytes of data.
func fragment4(pkt []byte, size int) [][]byte {
	ihl := int(pkt[0]&0xf) * 4
	data := pkt[ihl:]
	var out [][]byte
	for off := 0; off < len(data); off += size {
		end := min(off+size, len(data))
		f := append(bytes.Clone(pkt[:ihl]), data[off:end]...)
		binary.BigEndian.PutUint16(f[2:], uint16(len(f)))
		fo := binary.BigEndian.Uint16(pkt[6:])&ipv4FlagDF | uint16(off/8)
		if end < len(data) {
			fo |= ipv4FlagMF
		}
		binary.BigEndian.PutUint16(f[6:], fo)
		reseal4(f)
		out = append(out, f)
	}
	return out
}

// fragment6 cuts an IPv6 packet into fragments of size bytes of data,
// behind a Fragment header inserted after the whole extension-header
// chain before UDP.
func fragment6(pkt []byte, size int, id uint32) [][]byte {
	// The unfragmentable part: the header and every extension header
	// before UDP (the generator never fragments after a Fragment header:
	// a second one would make the chain invalid).
	off, nhAt := ipv6HeaderLen, 6
	for nh := pkt[6]; nh != protoUDP; nh = pkt[nhAt] {
		if nh == nhFragment {
			return [][]byte{pkt}
		}
		nhAt = off
		off += (int(pkt[off+1]) + 1) * 8
	}
	data := pkt[off:]
	var out [][]byte
	for o := 0; o < len(data); o += size {
		end := min(o+size, len(data))
		f := bytes.Clone(pkt[:off])
		f[nhAt] = nhFragment
		fo := uint16(o)
		if end < len(data) {
			fo |= 1
		}
		fh := []byte{protoUDP, 0, byte(fo >> 8), byte(fo), 0, 0, 0, 0}
		binary.BigEndian.PutUint32(fh[4:], id)
		f = append(f, fh...)
		f = append(f, data[o:end]...)
		binary.BigEndian.PutUint16(f[4:], uint16(len(f)-ipv6HeaderLen))
		out = append(out, f)
	}
	return out
}

// A mutation changes a case: pre edits the header description and
// payload before the packet is built, post edits the packet's bytes and
// picks its link-layer destination. fragOK says the mutated datagram may
// still be cut into fragments.
type mutation struct {
	name   string
	family int // 4 or 6 for a mutation of one family only
	pre    func(g *diffGen, h4 *ip4, h6 *ip6, pl *[]byte, sport *uint16)
	post   func(g *diffGen, pkt *[]byte) int
	fragOK bool
}

func is6(b []byte) bool { return b[0]>>4 == 6 }

// udpAt returns the offset of the UDP header in a packet the generator
// built.
func udpAt(b []byte) int {
	if !is6(b) {
		return int(b[0]&0xf) * 4
	}
	off, nh := ipv6HeaderLen, b[6]
	for nh != protoUDP && off+2 <= len(b) {
		n := (int(b[off+1]) + 1) * 8
		if nh == nhFragment {
			n = 8
		}
		nh = b[off]
		off += n
	}
	return off
}

// resum recomputes the UDP checksum of a built packet after an edit.
func resum(b []byte) {
	u := udpAt(b)
	ulen := int(binary.BigEndian.Uint16(b[u+4:]))
	seg := b[u:]
	if ulen >= 8 && ulen <= len(seg) {
		seg = seg[:ulen]
	}
	var c uint16
	if is6(b) {
		c = refUDPChecksum(b[8:24], b[24:40], seg)
	} else {
		c = refUDPChecksum(b[12:16], b[16:20], seg)
	}
	binary.BigEndian.PutUint16(b[u+6:], c)
}

func setSrc(b []byte, a netip.Addr) {
	if is6(b) {
		if a.Is4() {
			a = netip.AddrFrom16(a.As16())
		}
		s := a.As16()
		copy(b[8:24], s[:])
	} else {
		s := a.As4()
		copy(b[12:16], s[:])
		reseal4(b)
	}
	resum(b)
}

func setDst(b []byte, a netip.Addr) {
	if is6(b) {
		d := a.As16()
		copy(b[24:40], d[:])
	} else {
		d := a.As4()
		copy(b[16:20], d[:])
		reseal4(b)
	}
	resum(b)
}

func pick[T any](g *diffGen, xs ...T) T { return xs[g.intn(len(xs))] }

var mutations = []mutation{
	{name: "header bit flipped", post: func(g *diffGen, pkt *[]byte) int {
		b := *pkt
		end := udpAt(b) + 8
		i := g.intn(min(end, len(b)))
		b[i] ^= 1 << g.intn(8)
		if !is6(b) && g.chance(70) && int(b[0]&0xf)*4 <= len(b) && b[0]&0xf >= 5 {
			reseal4(b)
		}
		return linkHost
	}},
	{name: "IP length wrong", post: func(g *diffGen, pkt *[]byte) int {
		b := *pkt
		d := pick(g, -9, -8, -1, 1, 8, 1000)
		if is6(b) {
			binary.BigEndian.PutUint16(b[4:], uint16(int(binary.BigEndian.Uint16(b[4:]))+d))
		} else {
			binary.BigEndian.PutUint16(b[2:], uint16(int(binary.BigEndian.Uint16(b[2:]))+d))
			reseal4(b)
		}
		return linkHost
	}},
	{name: "UDP length wrong", post: func(g *diffGen, pkt *[]byte) int {
		b := *pkt
		u := udpAt(b)
		l := int(binary.BigEndian.Uint16(b[u+4:]))
		binary.BigEndian.PutUint16(b[u+4:], uint16(pick(g, 7, 1, l-1, l+1, l-8, l+8)))
		if g.chance(70) {
			resum(b)
		}
		return linkHost
	}, fragOK: true},
	{name: "UDP length 0", family: 6, post: func(g *diffGen, pkt *[]byte) int {
		b := *pkt
		u := udpAt(b)
		binary.BigEndian.PutUint16(b[u+4:], 0)
		binary.BigEndian.PutUint16(b[u+6:], 0)
		c := udpZeroLenChecksum(b, u)
		binary.BigEndian.PutUint16(b[u+6:], c)
		return linkHost
	}, fragOK: true},
	{name: "UDP checksum wrong", post: func(g *diffGen, pkt *[]byte) int {
		b := *pkt
		u := udpAt(b)
		if g.chance(30) {
			b[u+6], b[u+7] = 0, 0
		} else {
			b[u+6+g.intn(2)] ^= byte(1 + g.intn(255))
		}
		return linkHost
	}, fragOK: true},
	{name: "other port", pre: func(g *diffGen, h4 *ip4, h6 *ip6, pl *[]byte, sport *uint16) {}, post: func(g *diffGen, pkt *[]byte) int {
		b := *pkt
		u := udpAt(b)
		binary.BigEndian.PutUint16(b[u+2:], binary.BigEndian.Uint16(b[u+2:])+uint16(1+g.intn(100)))
		resum(b)
		return linkHost
	}, fragOK: true},
	{name: "other protocol", post: func(g *diffGen, pkt *[]byte) int {
		b := *pkt
		p := pick[byte](g, 6, 1, 58, 132, 136, 255)
		if is6(b) {
			u := udpAt(b)
			// The next-header field naming UDP.
			at := 6
			for off, nh := ipv6HeaderLen, b[6]; off < u; {
				at = off
				n := (int(b[off+1]) + 1) * 8
				if nh == nhFragment {
					n = 8
				}
				nh = b[off]
				off += n
			}
			b[at] = p
		} else {
			b[9] = p
			reseal4(b)
		}
		return linkHost
	}},
	{name: "foreign link destination", post: func(g *diffGen, pkt *[]byte) int { return linkOther }, fragOK: true},
	{name: "link broadcast", post: func(g *diffGen, pkt *[]byte) int { return linkBroadcast }, fragOK: true},
	{name: "destination", post: func(g *diffGen, pkt *[]byte) int {
		b := *pkt
		if is6(b) {
			setDst(b, netip.MustParseAddr(pick(g, "2001:db8::77", "::1", "::", "fe80::10", "2001:db8::")))
			return linkHost
		}
		a := pick(g, "192.0.2.77", "127.0.0.1", "192.0.2.255", "255.255.255.255", "224.0.0.1", "239.1.2.3", "0.0.0.0", "192.0.2.0", "198.51.100.1")
		setDst(b, netip.MustParseAddr(a))
		switch {
		case a[:3] == "224" || a[:3] == "239":
			return linkMulticast
		case a == "192.0.2.255" || a == "255.255.255.255":
			return pick(g, linkBroadcast, linkHost)
		}
		return linkHost
	}, fragOK: true},
	{name: "multicast destination", family: 6, post: func(g *diffGen, pkt *[]byte) int {
		// Groups the link's interface is in (all nodes, its
		// solicited-node groups, one another socket joined), one only lo
		// is in, groups of reserved and interface-local scope, and
		// groups nobody joined.
		groups := []string{"ff02::1", "ff02::2", "ff02::1:ff00:10", "ff01::1", "ff00::1", "ff0e::1234", "ff02::1:ff00:99", "ff02::1:3", diffJoined6.String(), diffJoinedLo6.String()}
		if g.solicitedLL.IsValid() {
			groups = append(groups, g.solicitedLL.String())
		}
		setDst(*pkt, netip.MustParseAddr(pick(g, groups...)))
		if g.chance(20) {
			setSrc(*pkt, netip.MustParseAddr(pick(g, "::", "::1", "fe80::1", "2001:db8::10")))
		}
		return pick(g, linkMulticast, linkMulticast, linkMulticast, linkHost, linkBroadcast)
	}, fragOK: true},
	{name: "multicast destination", family: 4, post: func(g *diffGen, pkt *[]byte) int {
		// All hosts, a group another socket joined on the link, one only
		// lo is in, groups nobody joined.
		setDst(*pkt, netip.MustParseAddr(pick(g, "224.0.0.1", "224.0.0.2", "224.0.0.251", "232.1.1.1", "239.255.255.250", diffJoined4.String(), diffJoinedLo4.String())))
		if g.chance(25) {
			// Sources the kernel refuses to any group, or allows only to
			// 224.0.0.0/24.
			setSrc(*pkt, netip.MustParseAddr(pick(g, "0.0.0.0", "0.1.2.3", "127.0.0.1", "192.0.2.10", "192.0.2.255", "255.255.255.255")))
		}
		return pick(g, linkMulticast, linkMulticast, linkMulticast, linkHost, linkBroadcast)
	}, fragOK: true},
	{name: "source", post: func(g *diffGen, pkt *[]byte) int {
		b := *pkt
		if is6(b) {
			setSrc(b, netip.MustParseAddr(pick(g, "ff02::1", "::1", "::", "2001:db8::10", "::ffff:192.0.2.9", "fe80::1", "2001:db8::ffff")))
			return linkHost
		}
		a := pick(g, "0.0.0.0", "255.255.255.255", "224.0.0.5", "127.0.0.1", "192.0.2.255", "192.0.2.10", "192.0.2.0", "240.0.0.1", "198.51.100.1")
		setSrc(b, netip.MustParseAddr(a))
		if g.chance(20) {
			setDst(b, netip.MustParseAddr(pick(g, "0.0.0.0", "255.255.255.255")))
			return linkBroadcast
		}
		return linkHost
	}, fragOK: true},
	{name: "ipv4 options", family: 4, pre: func(g *diffGen, h4 *ip4, h6 *ip6, pl *[]byte, sport *uint16) {
		h4.opts = g.badOptions4()
	}},
	{name: "ipv6 options", family: 6, pre: func(g *diffGen, h4 *ip4, h6 *ip6, pl *[]byte, sport *uint16) {
		typ := pick[uint8](g, nhHopByHop, nhDestOptions)
		h6.exts = []extHdr{{typ, g.badTLVs(typ)}}
		if typ == nhDestOptions && g.chance(30) {
			h6.exts = append([]extHdr{g.optsHdr(nhHopByHop)}, h6.exts...)
		}
	}, fragOK: true},
	{name: "routing header", family: 6, pre: func(g *diffGen, h4 *ip4, h6 *ip6, pl *[]byte, sport *uint16) {
		typ := pick[byte](g, 0, 1, 2, 3, 4, 5, 253)
		n := pick(g, 0, 2, 4)
		b := make([]byte, 8+8*n)
		b[1] = byte(n)
		b[2] = typ
		b[3] = byte(pick(g, 0, 0, 0, 1))
		h6.exts = append(h6.exts[:0:0], extHdr{nhRouting, b})
	}, post: func(g *diffGen, pkt *[]byte) int {
		return pick(g, linkHost, linkHost, linkBroadcast, linkMulticast)
	}, fragOK: true},
	{name: "long extension chain", family: 6, pre: func(g *diffGen, h4 *ip4, h6 *ip6, pl *[]byte, sport *uint16) {
		h6.exts = nil
		for range 7 + g.intn(6) {
			h6.exts = append(h6.exts, g.optsHdr(nhDestOptions))
		}
	}, fragOK: true},
}

// udpZeroLenChecksum is the checksum of a UDP header whose length field is
// 0 (a jumbo-style length, RFC 2675): the pseudo-header carries the
// length of the rest of the packet.
func udpZeroLenChecksum(b []byte, u int) uint16 {
	seg := bytes.Clone(b[u:])
	var s, d []byte
	if is6(b) {
		s, d = b[8:24], b[24:40]
	} else {
		s, d = b[12:16], b[16:20]
	}
	c := ^refSum(refPseudoSum(s, d, len(seg)), seg)
	if c == 0 {
		c = 0xffff
	}
	return c
}

// badOptions4 is an IPv4 option list, most of which the kernel refuses.
func (g *diffGen) badOptions4() []byte {
	var o []byte
	switch g.intn(14) {
	case 0: // a length past the header
		o = []byte{0x1e, 12, 0, 0}
	case 1: // a length below 2
		o = []byte{0x1e, byte(g.intn(2)), 0, 0}
	case 2: // truncated: no room for the length
		o = []byte{1, 1, 1, 0x1e}
	case 3: // Router Alert, wrong length
		o = []byte{148, byte(pick(g, 2, 3, 6)), 0, 0, 0, 0, 0, 0}
	case 4: // Record Route, pointer below 4 or not room for an address
		o = []byte{7, 7, byte(pick(g, 0, 3, 5, 6)), 0, 0, 0, 0, 0}
	case 5: // Timestamp, pointer below 5, or too short
		o = []byte{68, byte(pick(g, 3, 8)), byte(pick(g, 1, 4, 6)), 0, 0, 0, 0, 0}
	case 6: // Timestamp full, overflow count at 15
		o = []byte{68, 8, 9, 0xf0, 0, 0, 0, 0}
	case 7: // Timestamp full, overflow count below 15
		o = []byte{68, 8, 9, byte(g.intn(15)) << 4, 0, 0, 0, 0}
	case 8: // Timestamp with an unknown flag, or addresses without room
		o = []byte{68, 8, 5, byte(pick(g, 1, 2, 3, 4)), 0, 0, 0, 0}
	case 9: // an option twice
		opt := pick(g, []byte{7, 7, 4, 0, 0, 0, 0}, []byte{68, 8, 5, 0, 0, 0, 0, 0}, []byte{148, 4, 0, 0})
		o = append(append(o, opt...), opt...)
	case 10: // CIPSO
		o = []byte{134, 10, 0, 0, 0, 1, 1, 4, 0, 0}
	case 11: // source routes (accept_source_route is 0 by default)
		o = []byte{byte(pick(g, 131, 137)), 7, byte(pick(g, 4, 8)), 192, 0, 2, 10}
	case 12: // Router Alert with a value, or a longer one
		o = pick(g, []byte{148, 4, 0, 1}, []byte{148, 6, 0, 0, 0, 0})
	case 13: // EOL then garbage, which the kernel ignores
		o = []byte{0, 0x44, 0x01, 0x99}
	}
	for len(o)%4 != 0 {
		o = append(o, 0)
	}
	return o
}

// badTLVs is the body of an options header of type typ, most of which the
// kernel refuses.
func (g *diffGen) badTLVs(typ uint8) []byte {
	b := []byte{0, 0}
	switch g.intn(11) {
	case 0: // an unknown option whose type says discard
		b = append(b, byte(pick(g, 0x40, 0x80, 0xc0)|0x1e), 2, 0, 0)
	case 1: // 8 Pad1 in a row
		b = append(b, make([]byte, 8)...)
	case 2: // PadN longer than 7
		b = append(b, 1, 6, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
	case 3: // PadN with data
		b = append(b, 1, 4, 0, 0, 1, 0)
	case 4: // an option running past the header
		b = append(b, 0x1e, 10, 0, 0)
	case 5: // more options than max_*_opts_number (8)
		for range 9 + g.intn(2) {
			b = append(b, 0x1e, 0)
		}
	case 6: // exactly 8 options
		for range 8 {
			b = append(b, 0x1e, 0)
		}
	case 7: // Jumbo Payload
		b = append(b, 194, 4, 0, 1, 0, 0)
	case 8: // Router Alert, right or wrong length
		b = append(b, 5, byte(pick(g, 2, 2, 1, 3)), 0, 0)
	case 9: // 7 bytes of padding: the most allowed
		b = append(b, 1, 5, 0, 0, 0, 0, 0)
	case 10: // an unknown option to skip, misaligned
		b = append(b, 0, 0x1e, 1, 0)
	}
	for len(b)%8 != 0 {
		b = append(b, 0)
	}
	// Trailing Pad1 bytes may have made padding too long; that is part
	// of what the kernel judges.
	b[1] = byte(len(b)/8 - 1)
	return b
}
