package main

import (
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"strconv"
	"time"

	"github.com/udpstream/udpstream"
)

// jsonTime is RFC 3339 with nanoseconds, always nine digits, so that every
// line's time has the same width.
const jsonTime = "2006-01-02T15:04:05.000000000Z07:00"

// printer writes one line per packet, each line in one Write: w is a
// buffer that the caller flushes when no datagram is waiting (see pump),
// or stdout itself.
type printer struct {
	w     io.Writer
	json  bool
	names ifNames
	buf   []byte
}

func newPrinter(w io.Writer, asJSON bool) *printer {
	return &printer{w: w, json: asJSON, names: ifNames{lookup: interfaceName}}
}

// packet prints p: a delivered datagram, or one that carries an error
// (a datagram to another port, a decoder error).
func (pr *printer) packet(p udpstream.Packet[[]byte]) error {
	line, err := pr.line(p)
	if err != nil {
		return err
	}
	_, err = pr.w.Write(line)
	return err
}

// line formats p's line, newline included, into a buffer that the next
// call reuses.
func (pr *printer) line(p udpstream.Packet[[]byte]) ([]byte, error) {
	name := pr.names.name(p.Header.IfIndex, time.Now())
	if pr.json {
		b, err := json.Marshal(newRecord(p, name))
		if err != nil {
			return nil, err
		}
		pr.buf = append(append(pr.buf[:0], b...), '\n')
	} else {
		pr.buf = appendText(pr.buf[:0], p, name)
	}
	return pr.buf, nil
}

// record is the -json line. The field names and types are a contract
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

// payloadLen is the datagram's payload length. A packet carrying only an
// error (no decoded payload) takes it from the UDP header.
func payloadLen(p udpstream.Packet[[]byte]) int {
	if p.Value == nil && p.Err != nil {
		return max(int(p.Header.UDPLength)-8, 0)
	}
	return len(p.Value)
}

// textTime is RFC 3339 with microseconds: finer than a terminal reader
// needs, and of fixed width so that the columns line up.
const textTime = "2006-01-02T15:04:05.000000Z07:00"

// previewBytes is how much of the payload a readable line shows.
const previewBytes = 32

// appendText appends the readable line for p. Columns have minimum widths
// that fit any IPv4 datagram, so that lines line up in a terminal; a long
// IPv6 address or interface name widens its own line only.
func appendText(b []byte, p udpstream.Packet[[]byte], ifname string) []byte {
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
		ttl, h.TTL, h.TOS, h.DSCP(), h.ECN(), identity(h), payloadLen(p))
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
func identity(h udpstream.Header) string {
	var s string
	if h.Version == 4 {
		s = "id " + known(h, udpstream.FieldID, uint64(h.ID))
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
			s += " frag-id " + known(h, udpstream.FieldID, uint64(h.ID))
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
		s += " frags " + known(h, udpstream.FieldFragments, uint64(h.Fragments))
	}
	return s
}

// known is v in decimal, or "?" when h's mode cannot see field f.
func known(h udpstream.Header, f udpstream.HeaderFields, v uint64) string {
	if !h.Known(f) {
		return "?"
	}
	return strconv.FormatUint(v, 10)
}

// appendPreview appends the start of payload as a quoted string: printable
// ASCII as is, anything else escaped, and "…" after the closing quote when
// there is more.
func appendPreview(b, payload []byte) []byte {
	const digits = "0123456789abcdef"
	n := min(len(payload), previewBytes)
	b = append(b, '"')
	for _, c := range payload[:n] {
		switch {
		case c == '"' || c == '\\':
			b = append(b, '\\', c)
		case c == '\n':
			b = append(b, `\n`...)
		case c == '\r':
			b = append(b, `\r`...)
		case c == '\t':
			b = append(b, `\t`...)
		case c >= 0x20 && c < 0x7f:
			b = append(b, c)
		default:
			b = append(b, '\\', 'x', digits[c>>4], digits[c&15])
		}
	}
	b = append(b, '"')
	if len(payload) > n {
		b = append(b, "…"...)
	}
	return b
}

// ifNames caches interface names by index: resolving one asks the kernel
// for every interface, too much to do per datagram. Entries expire so that
// a renamed interface, or an index reused by a new one, shows up.
type ifNames struct {
	lookup func(index int) string
	cache  map[int]cachedName
}

type cachedName struct {
	name string
	at   time.Time
}

// ifNameTTL is how long a resolved name is trusted.
const ifNameTTL = 10 * time.Second

// name returns the interface's name, "" when it cannot be resolved.
func (c *ifNames) name(index int, now time.Time) string {
	if e, ok := c.cache[index]; ok && now.Sub(e.at) < ifNameTTL {
		return e.name
	}
	if c.cache == nil {
		c.cache = make(map[int]cachedName)
	}
	// A failure is cached too, so that datagrams from a vanished
	// interface do not each cost a lookup.
	n := c.lookup(index)
	c.cache[index] = cachedName{name: n, at: now}
	return n
}

// interfaceName asks the system for an interface's name.
func interfaceName(index int) string {
	ifi, err := net.InterfaceByIndex(index)
	if err != nil {
		return ""
	}
	return ifi.Name
}

// statsLine is the -stats object: the library's counters, with delivered
// replaced by the datagrams printed and the sum of the drop reasons beside
// them. The outer fields hide the embedded Delivered in JSON.
type statsLine struct {
	Delivered uint64 `json:"delivered"`
	Dropped   uint64 `json:"dropped"`
	udpstream.Stats
}

// printStats prints the -stats object as one line on stderr.
func printStats(stderr io.Writer, st udpstream.Stats, printed uint64) {
	b, err := json.Marshal(statsLine{Delivered: printed, Dropped: st.Dropped(), Stats: st})
	if err != nil {
		warn(stderr, fmt.Errorf("encoding stats: %w", err))
		return
	}
	fmt.Fprintf(stderr, "%s\n", b)
}

// dropReasons names the drop counters for the summary, in the order of
// Stats. Kernel drops have a line of their own, as in tcpdump's summary.
var dropReasons = []struct {
	name  string
	count func(udpstream.Stats) uint64
}{
	{"to another port", func(s udpstream.Stats) uint64 { return s.OtherPort }},
	{"not IP", func(s udpstream.Stats) uint64 { return s.NotIP }},
	{"not UDP", func(s udpstream.Stats) uint64 { return s.NotUDP }},
	{"malformed", func(s udpstream.Stats) uint64 { return s.Malformed }},
	{"bad IPv4 header checksum", func(s udpstream.Stats) uint64 { return s.BadIPChecksum }},
	{"bad UDP checksum", func(s udpstream.Stats) uint64 { return s.BadUDPChecksum }},
	{"zero UDP checksum over IPv6", func(s udpstream.Stats) uint64 { return s.ZeroUDPChecksum }},
	{"unsupported headers", func(s udpstream.Stats) uint64 { return s.Unsupported }},
	{"not for this host", func(s udpstream.Stats) uint64 { return s.NotLocal }},
	{"too long for the buffer", func(s udpstream.Stats) uint64 { return s.TooLong }},
	{"overlapping fragments", func(s udpstream.Stats) uint64 { return s.FragOverlap }},
	{"reassembly timed out", func(s udpstream.Stats) uint64 { return s.FragTimeout }},
	{"evicted from reassembly", func(s udpstream.Stats) uint64 { return s.FragEvicted }},
	{"IP options the kernel refuses", func(s udpstream.Stats) uint64 { return s.BadOptions }},
	{"martian source", func(s udpstream.Stats) uint64 { return s.Martian }},
	{"fragments of mixed ECN", func(s udpstream.Stats) uint64 { return s.FragECN }},
	{"still in the stream at exit", func(s udpstream.Stats) uint64 { return s.Abandoned }},
}

// plural is n with noun, in the plural unless n is 1.
func plural(n uint64, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return strconv.FormatUint(n, 10) + " " + noun + "s"
}

// appendSummary appends the summary printed at exit without -stats, as
// tcpdump prints one: the datagrams delivered, those dropped with the
// reasons that occurred, and the kernel's drops: frames of the ring, or in
// socket mode datagrams at the socket. Each line starts with the tool's
// prefix, so that no one takes it for the -stats object.
func appendSummary(b []byte, st udpstream.Stats, delivered uint64, mode udpstream.Mode) []byte {
	b = fmt.Appendf(b, "udpstream: %s delivered", plural(delivered, "datagram"))
	if st.DecodeErrors > 0 {
		b = fmt.Appendf(b, ", %s", plural(st.DecodeErrors, "decoder error"))
	}
	dropped := st.Dropped() - st.KernelDrops
	b = fmt.Appendf(b, "\nudpstream: %s dropped", plural(dropped, "datagram"))
	sep := ": "
	for _, r := range dropReasons {
		if n := r.count(st); n > 0 {
			b = fmt.Appendf(b, "%s%d %s", sep, n, r.name)
			sep = ", "
		}
	}
	if mode == udpstream.ModeSocket {
		return fmt.Appendf(b, "\nudpstream: %s dropped by the kernel (socket buffer full)\n", plural(st.KernelDrops, "datagram"))
	}
	return fmt.Appendf(b, "\nudpstream: %s dropped by the kernel (receive ring full)\n", plural(st.KernelDrops, "frame"))
}

// printSummary prints the exit summary on stderr.
func printSummary(stderr io.Writer, st udpstream.Stats, delivered uint64, mode udpstream.Mode) {
	stderr.Write(appendSummary(nil, st, delivered, mode))
}
