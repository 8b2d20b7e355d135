package udpstream_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log"
	"net/netip"
	"os"
	"os/signal"
	"sync"
	"time"

	"github.com/udpstream/udpstream"
)

// Ranging over the channel: one loop for IPv4 and IPv6, with the header of
// every datagram.
func Example() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()

	pkts, err := udpstream.Listen(ctx, 5353, udpstream.Payload)
	if err != nil {
		log.Fatal(err) // e.g. missing CAP_NET_RAW: the error says how to grant it
	}
	for p := range pkts {
		if p.Err != nil {
			log.Print(p.Err)
			continue
		}
		fmt.Println(p.Header.Src, "ttl", p.Header.TTL, "ecn", p.Header.ECN(), len(p.Value), "bytes")
	}
}

// Without CAP_NET_RAW: ModeAuto falls back to socket mode, where the
// fields a UDP socket cannot see are marked unknown rather than shown as
// zero.
func ExampleWithMode() {
	s, err := udpstream.Open(context.Background(), 5353, udpstream.Payload, udpstream.WithMode(udpstream.ModeAuto))
	if err != nil {
		log.Fatal(err)
	}
	defer s.Close()
	log.Printf("mode %v", s.Mode())
	for p := range s.Packets() {
		id := "?"
		if p.Header.Known(udpstream.FieldID) {
			id = fmt.Sprint(p.Header.ID)
		}
		fmt.Println(p.Header.Src, "ttl", p.Header.TTL, "id", id)
	}
}

// Selecting on the stream and a ticker in one loop, with the Stream handle
// for counters and the reason it ended.
func Example_select() {
	s, err := udpstream.Open(context.Background(), 0, udpstream.HeaderOnly)
	if err != nil {
		log.Fatal(err)
	}
	defer s.Close()
	fmt.Println("listening on port", s.Port())

	tick := time.NewTicker(10 * time.Second)
	defer tick.Stop()
	for {
		select {
		case p, ok := <-s.Packets():
			if !ok {
				log.Printf("stream ended: %v", s.Err())
				return
			}
			fmt.Println(p.Header.Src, p.Header.Dst, p.Header.TTL)
		case <-tick.C:
			st := s.Stats()
			fmt.Printf("delivered %d, dropped %d (kernel %d)\n", st.Delivered, st.Dropped(), st.KernelDrops)
		}
	}
}

// A pipeline stage: the stream feeds a pool of workers that answer each
// datagram from the address it was sent to.
func Example_pipeline() {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pkts, err := udpstream.Listen(ctx, 7, udpstream.Payload) // echo
	if err != nil {
		log.Fatal(err)
	}
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for p := range pkts {
				if p.Err != nil {
					continue
				}
				if err := p.Reply(p.Value); err != nil {
					log.Print(err)
				}
			}
		}()
	}
	wg.Wait()
}

// dnsQuery is what a DNS server might keep of a query: the decoder copies
// only these fields out of the datagram, which is valid only during the
// call.
type dnsQuery struct {
	ID      uint16
	Flags   uint16
	Queries uint16
}

var errShortDNS = errors.New("short DNS message")

func decodeDNS(d *udpstream.Datagram) (dnsQuery, error) {
	b := d.Payload()
	if len(b) < 12 {
		return dnsQuery{}, errShortDNS
	}
	return dnsQuery{
		ID:      binary.BigEndian.Uint16(b[0:]),
		Flags:   binary.BigEndian.Uint16(b[2:]),
		Queries: binary.BigEndian.Uint16(b[4:]),
	}, nil
}

// A custom decoder: T is inferred from it and checked at compile time.
func Example_customDecoder() {
	pkts, err := udpstream.Listen(context.Background(), 53, decodeDNS,
		udpstream.WithNetwork("udp4"), udpstream.WithChannelCapacity(4096))
	if err != nil {
		log.Fatal(err)
	}
	for p := range pkts {
		if errors.Is(p.Err, errShortDNS) {
			continue // the header is still there: p.Header.Src sent junk
		}
		q := p.Value
		fmt.Printf("query %#04x from %v, %d hops away\n", q.ID, p.Header.Src, 64-int(p.Header.TTL))
	}
}

func ExampleHeader_ECN() {
	h := udpstream.Header{TOS: 0xb8 | 3} // DSCP 46 (EF), ECN CE
	fmt.Println(h.DSCP(), h.ECN())
	// Output: 46 CE
}

// Watching malformed traffic as a security tool would: datagrams the
// stream drops reach the channel as errors, with what their header said.
func ExampleWithDropErrors() {
	pkts, err := udpstream.Listen(context.Background(), 123, udpstream.HeaderOnly, udpstream.WithDropErrors())
	if err != nil {
		log.Fatal(err)
	}
	var panicked *udpstream.DecoderPanicError
	for p := range pkts {
		switch {
		case errors.Is(p.Err, udpstream.ErrMalformed), errors.Is(p.Err, udpstream.ErrChecksum):
			log.Printf("%v from %v, ttl %d", p.Err, p.Header.Src, p.Header.TTL)
		case errors.As(p.Err, &panicked):
			log.Printf("%v\n%s", panicked, panicked.Stack)
		}
	}
}

// Answering with header fields of one's choice, zero included: mDNS
// answers with TTL 255, and a zero traffic class clears a default.
func ExampleSendOptions() {
	s, err := udpstream.Open(context.Background(), 0, udpstream.Payload,
		udpstream.WithSendOptions(udpstream.SendOptions{TOS: udpstream.Value(0xb8)}))
	if err != nil {
		log.Fatal(err)
	}
	defer s.Close()
	for p := range s.Packets() {
		if p.Err == nil {
			_ = p.ReplyWith(p.Value, udpstream.SendOptions{TTL: udpstream.Value(255), TOS: udpstream.Value(0)})
		}
	}
}

func ExampleValue() {
	o := udpstream.SendOptions{TTL: udpstream.Value(64)}
	fmt.Println(o.TTL, o.TOS)
	// Output: 64 unset
}

// An mDNS responder: it joins the mDNS groups of both families on one
// interface and answers each query to the group, with TTL 255 as RFC 6762
// asks. (answer stands for the program's own record lookup.)
func ExampleWithJoin() {
	mdns4, mdns6 := netip.MustParseAddr("224.0.0.251"), netip.MustParseAddr("ff02::fb")
	s, err := udpstream.Open(context.Background(), 5353, udpstream.Payload,
		udpstream.WithInterface("eth0"), udpstream.WithJoin(mdns4, mdns6))
	if err != nil {
		log.Fatal(err)
	}
	defer s.Close()
	answer := func(query []byte) []byte { return nil }
	ttl := udpstream.SendOptions{TTL: udpstream.Value(255)}
	for p := range s.Packets() {
		if p.Err != nil || !p.Header.Dst.Addr().IsMulticast() {
			continue
		}
		a := answer(p.Value)
		if a == nil {
			continue
		}
		// To the group it came to, from the interface's address, by the
		// interface the stream is bound to (for IPv6 the group's zone,
		// eth0, names it too).
		group := netip.AddrPortFrom(p.Header.Dst.Addr(), 5353)
		if err := s.Send(a, netip.Addr{}, group, ttl); err != nil {
			log.Print(err)
		}
	}
}

// Seeing the fragments a datagram arrived in, as they came: each one's
// TTL and arrival time, which may differ where fragments took different
// paths. The views are valid only during the decoder call.
func ExampleWithFragments() {
	type arrival struct {
		ttl uint8
		at  time.Time
	}
	fragments := func(d *udpstream.Datagram) ([]arrival, error) {
		var a []arrival
		for _, f := range d.Fragments() {
			ttl := f.IP[8] // IPv4 TTL
			if f.IP[0]>>4 == 6 {
				ttl = f.IP[7] // IPv6 hop limit
			}
			a = append(a, arrival{ttl, f.Time})
		}
		return a, nil
	}
	pkts, err := udpstream.Listen(context.Background(), 4789, fragments, udpstream.WithFragments())
	if err != nil {
		log.Fatal(err)
	}
	for p := range pkts {
		for i, a := range p.Value {
			fmt.Printf("%v: fragment %d of %d, ttl %d, at %v\n", p.Header.Src, i+1, p.Header.Fragments, a.ttl, a.at)
		}
	}
}

// At high rates: each payload copied into pooled memory, released once
// it has been used, so that receiving allocates nothing.
func ExamplePayloadBuffer() {
	pkts, err := udpstream.Listen(context.Background(), 5353, udpstream.PayloadBuffer)
	if err != nil {
		log.Fatal(err)
	}
	var total int
	for p := range pkts {
		if p.Err != nil {
			log.Print(p.Err)
			continue
		}
		total += len(p.Value.Bytes())
		p.Value.Release() // p.Value.Bytes() must not be used after this
	}
	fmt.Println(total, "bytes")
}
