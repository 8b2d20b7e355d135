package main

import (
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"strconv"
	"time"
	"unicode/utf8"

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
		pr.buf = append(appendRecord(pr.buf[:0], p, name), '\n')
	} else {
		pr.buf = appendText(pr.buf[:0], p, name)
	}
	return pr.buf, nil
}

// appendRecord appends p's -json object, exactly as encoding/json writes
// newRecord's (see its test), without its reflection and allocations: at
// high rates the encoding was most of the tool's cost per datagram. The
// field names and types are a contract that scripts parse: every key is
// always present except error, which only error lines carry. A field the
// stream's mode cannot see (in socket mode: id, df, udp_checksum, and
// fragments and ext_headers of a fragmented datagram) is null, never a
// made-up zero.
func appendRecord(b []byte, p udpstream.Packet[[]byte], ifname string) []byte {
	h := p.Header
	b = append(b, `{"time":"`...)
	b = h.Time.UTC().AppendFormat(b, jsonTime)
	b = append(b, `","ifindex":`...)
	b = strconv.AppendInt(b, int64(h.IfIndex), 10)
	b = append(b, `,"ifname":`...)
	b = appendJSONString(b, ifname)
	b = append(b, `,"family":`...)
	b = strconv.AppendUint(b, uint64(h.Version), 10)
	b = append(b, `,"src":"`...)
	b = h.Src.Addr().AppendTo(b)
	b = append(b, `","sport":`...)
	b = strconv.AppendUint(b, uint64(h.Src.Port()), 10)
	b = append(b, `,"dst":"`...)
	b = h.Dst.Addr().AppendTo(b)
	b = append(b, `","dport":`...)
	b = strconv.AppendUint(b, uint64(h.Dst.Port()), 10)
	b = append(b, `,"ttl":`...)
	b = strconv.AppendUint(b, uint64(h.TTL), 10)
	b = append(b, `,"tos":`...)
	b = strconv.AppendUint(b, uint64(h.TOS), 10)
	b = append(b, `,"id":`...)
	b = appendUintOrNull(b, h.Known(udpstream.FieldID), uint64(h.ID))
	b = append(b, `,"df":`...)
	if h.Known(udpstream.FieldDF) {
		b = strconv.AppendBool(b, h.DF)
	} else {
		b = append(b, "null"...)
	}
	b = append(b, `,"flow":`...)
	b = strconv.AppendUint(b, uint64(h.FlowLabel), 10)
	b = append(b, `,"ip_options":"`...)
	b = hex.AppendEncode(b, h.Options)
	b = append(b, `","ext_headers":`...)
	if h.Known(udpstream.FieldExtHeaders) {
		b = append(b, '[')
		for i, x := range h.ExtHeaders {
			if i > 0 {
				b = append(b, ',')
			}
			b = strconv.AppendUint(b, uint64(x), 10)
		}
		b = append(b, ']')
	} else {
		b = append(b, "null"...)
	}
	b = append(b, `,"fragments":`...)
	b = appendUintOrNull(b, h.Known(udpstream.FieldFragments), uint64(h.Fragments))
	b = append(b, `,"udp_len":`...)
	b = strconv.AppendUint(b, uint64(h.UDPLength), 10)
	b = append(b, `,"udp_checksum":`...)
	b = appendUintOrNull(b, h.Known(udpstream.FieldUDPChecksum), uint64(h.UDPChecksum))
	b = append(b, `,"len":`...)
	b = strconv.AppendInt(b, int64(payloadLen(p)), 10)
	b = append(b, `,"payload":"`...)
	b = hex.AppendEncode(b, p.Value)
	b = append(b, `","dscp":`...)
	b = strconv.AppendUint(b, uint64(h.DSCP()), 10)
	b = append(b, `,"ecn":"`...)
	b = append(b, h.ECN().String()...)
	b = append(b, `","hlim":`...)
	b = appendUintOrNull(b, h.Version == 6, uint64(h.TTL))
	if p.Err != nil {
		b = append(b, `,"error":`...)
		b = appendJSONString(b, p.Err.Error())
	}
	return append(b, '}')
}

// appendUintOrNull appends v in decimal, or null for a field not known.
func appendUintOrNull(b []byte, known bool, v uint64) []byte {
	if !known {
		return append(b, "null"...)
	}
	return strconv.AppendUint(b, v, 10)
}

// appendJSONString appends s as a JSON string, escaped as encoding/json
// escapes it. Most strings need no escaping and take the short way.
func appendJSONString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			q, _ := json.Marshal(s) // a string always encodes
			return append(b, q...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
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
	b = h.Time.UTC().AppendFormat(b, textTime)
	b = append(b, "  "...)
	col := len(b)
	if ifname == "" {
		b = append(b, "if"...)
		b = strconv.AppendInt(b, int64(h.IfIndex), 10)
	} else {
		b = append(b, ifname...)
	}
	b = padRight(b, col, 8)
	b = append(b, " IPv"...)
	b = strconv.AppendUint(b, uint64(h.Version), 10)
	b = append(b, "  "...)
	col = len(b)
	b = h.Src.AppendTo(b)
	b = append(b, " → "...)
	b = h.Dst.AppendTo(b)
	b = padRight(b, col, 45)
	// IPv6 calls it the hop limit; the wider name takes the space before
	// it, so that the IPv4 line is as it always was.
	if h.Version == 6 {
		b = append(b, " hlim "...)
	} else {
		b = append(b, "  ttl "...)
	}
	b = appendNumber(b, uint64(h.TTL), 10, 3, ' ')
	b = append(b, "  tos 0x"...)
	b = appendNumber(b, uint64(h.TOS), 16, 2, '0')
	b = append(b, " dscp "...)
	b = appendNumber(b, uint64(h.DSCP()), 10, 2, ' ')
	b = append(b, ' ')
	col = len(b)
	b = append(b, h.ECN().String()...)
	b = padRight(b, col, 7)
	b = append(b, "  "...)
	col = len(b)
	b = appendIdentity(b, h)
	b = padRight(b, col, 16)
	b = append(b, "  len "...)
	b = appendNumber(b, uint64(payloadLen(p)), 10, 5, ' ')
	b = append(b, "  "...)
	if p.Err != nil {
		b = append(b, "error: "...)
		b = append(b, p.Err.Error()...)
	} else {
		b = appendPreview(b, p.Value)
	}
	return append(b, '\n')
}

// padRight pads what b holds from col with spaces to width characters,
// as fmt's %-*s does.
func padRight(b []byte, col, width int) []byte {
	for n := utf8.RuneCount(b[col:]); n < width; n++ {
		b = append(b, ' ')
	}
	return b
}

// appendNumber appends v in base, padded on the left with pad to width
// digits, as fmt's %*d, %0*x and the like do.
func appendNumber(b []byte, v uint64, base, width int, pad byte) []byte {
	var digits [20]byte
	d := strconv.AppendUint(digits[:0], v, base)
	for n := len(d); n < width; n++ {
		b = append(b, pad)
	}
	return append(b, d...)
}

// appendIdentity appends the readable line's column for what tells
// datagrams apart and how they travelled: IPv4 ID and flags, or IPv6 flow
// label and fragment ID; then fragments, options and extension headers if
// any. A field the mode cannot see shows as "?".
func appendIdentity(b []byte, h udpstream.Header) []byte {
	if h.Version == 4 {
		b = append(b, "id "...)
		b = appendKnown(b, h, udpstream.FieldID, uint64(h.ID))
		switch {
		case !h.Known(udpstream.FieldDF):
			b = append(b, " DF?"...)
		case h.DF:
			b = append(b, " DF"...)
		}
		if h.MF {
			b = append(b, " MF"...)
		}
		if len(h.Options) > 0 {
			b = append(b, " opt "...)
			b = hex.AppendEncode(b, h.Options)
		}
	} else {
		b = append(b, "flow 0x"...)
		b = appendNumber(b, uint64(h.FlowLabel), 16, 5, '0')
		if h.ID != 0 || !h.Known(udpstream.FieldID) {
			b = append(b, " frag-id "...)
			b = appendKnown(b, h, udpstream.FieldID, uint64(h.ID))
		}
		for i, x := range h.ExtHeaders {
			if i == 0 {
				b = append(b, " ext "...)
			} else {
				b = append(b, ',')
			}
			b = strconv.AppendUint(b, uint64(x), 10)
		}
	}
	if h.Fragments > 1 {
		b = append(b, " frags "...)
		b = appendKnown(b, h, udpstream.FieldFragments, uint64(h.Fragments))
	}
	return b
}

// appendKnown appends v in decimal, or "?" when h's mode cannot see field
// f.
func appendKnown(b []byte, h udpstream.Header, f udpstream.HeaderFields, v uint64) []byte {
	if !h.Known(f) {
		return append(b, '?')
	}
	return strconv.AppendUint(b, v, 10)
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
	st = unprinted(st, printed)
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
	{"refused by the kernel (firewall or kernel rule)", func(s udpstream.Stats) uint64 { return s.Rejected }},
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
	switch mode {
	case udpstream.ModeSocket:
		return fmt.Appendf(b, "\nudpstream: %s dropped by the kernel (socket buffer full)\n", plural(st.KernelDrops, "datagram"))
	case udpstream.ModeKernel:
		return fmt.Appendf(b, "\nudpstream: %s dropped by the kernel (receive ring or socket buffer full)\n", plural(st.KernelDrops, "datagram"))
	}
	return fmt.Appendf(b, "\nudpstream: %s dropped by the kernel (receive ring full)\n", plural(st.KernelDrops, "frame"))
}

// printSummary prints the exit summary on stderr.
// unprinted counts the datagrams the stream delivered to the tool but the
// tool never put out as abandoned: those still in the channel when -count
// or a closed output ended the run. delivered then counts the datagrams
// put out, and dropped every other one, as in the library's accounting.
func unprinted(st udpstream.Stats, printed uint64) udpstream.Stats {
	if st.Delivered > printed {
		st.Abandoned += st.Delivered - printed
	}
	st.Delivered = printed
	return st
}

func printSummary(stderr io.Writer, st udpstream.Stats, delivered uint64, mode udpstream.Mode) {
	st = unprinted(st, delivered)
	stderr.Write(appendSummary(nil, st, delivered, mode))
}
