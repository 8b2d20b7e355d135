// Command bench measures udpstream side by side with other ways of
// receiving UDP on Linux, on the same traffic, in one run:
//
//	cd bench && go run .          # the full run (a few minutes)
//	cd bench && go run . -quick   # a smoke run of a few thousand datagrams
//
// It never uses the host's network. It re-executes itself in a new network
// namespace (and a new user namespace when it is not root, which grants it
// CAP_NET_RAW there), brings loopback up in it, and sends only to 127.0.0.1
// and ::1 inside it; the capture comparison (below) sends over a veth pair
// between it and a second namespace of its own.
//
// A sender calling sendmmsg(2) directly, 64 datagrams a call, sends a
// fixed number of datagrams at full rate to each receiver in turn. Every
// receiver reads the same things of every datagram (source, destination
// where it can, TTL or hop limit, the first and last byte of the payload)
// and runs in a process of its own, so that its CPU time, user and
// system, counted from its first datagram, is its own:
//
//   - net.UDPConn: ReadMsgUDPAddrPort on [::]:port with a reused buffer, no
//     header access; the baseline of every ratio.
//   - x/net-batch: golang.org/x/net/ipv4 and ipv6 PacketConns with TTL / hop
//     limit and destination control messages, read with ReadBatch.
//   - naive-packet: the design udpstream replaces, two AF_PACKET sockets
//     (one per family) read with recvfrom into a fresh buffer per packet,
//     port checked in user space, no kernel filter.
//   - gopacket-afpacket: github.com/google/gopacket/afpacket, TPACKET_V3,
//     with a classic BPF filter for the port built with golang.org/x/net/bpf.
//   - udpstream: udpstream.Open with default options, ranging over the
//     channel, with a decoder that copies nothing and touches the payload.
//   - udpstream-copy: the same with the built-in udpstream.Payload decoder.
//   - udpstream-buffer: the same with the built-in udpstream.PayloadBuffer
//     decoder, each Buffer released once the consumer has read it.
//   - udpstream-socket: udpstream with WithMode(ModeSocket): no packet
//     socket; the port's UDP socket read with recvmmsg and control messages
//     for TTL / hop limit, TOS, destination, interface and time.
//   - udpstream-kernel: udpstream with WithMode(ModeKernel): the ring's
//     datagrams, each delivered once its twin, read from the port's UDP
//     socket, shows the kernel delivered it too.
//   - udpstream-fanout2: udpstream with WithFanout(2): two packet sockets
//     per family in a fanout group, each with its own receive goroutine.
//
// Three floors follow, the receivers a channel API is fairly set against:
//
//   - net.UDPConn+chan: the baseline's socket read on one goroutine, each
//     datagram (its source and bytes, in one of capacity+2 buffers that
//     take turns) handed over a channel of udpstream's default capacity
//     to a consumer goroutine. In the ping-pong the consumer answers: it is
//     the anchor of any channel API's round trip.
//   - ring-floor: udpstream's packet sockets (SOCK_RAW with
//     PACKET_VNET_HDR, one per family, every interface), its filter, its
//     TPACKET_V2 ring of udpstream.DefaultBufferSize in 2 KiB frames and
//     its way of waiting (a private epoll instance on the runtime poller;
//     a ring that held 4 frames or more when found empty is muted and
//     looked at again after a 250 µs sleep), written anew here since the
//     library's are unexported. It parses what every receiver reads and
//     hands nothing over.
//   - ring+chan-floor: ring-floor, each datagram then sent on a channel of
//     udpstream's default capacity as a value of the size of the
//     udpstream receiver's Packet (unsafe.Sizeof, so it follows the type)
//     to one consumer goroutine that ranges over it.
//
// The packet-socket receivers reserve the port with a UDP socket that never
// queues data, as udpstream does, so the kernel sends no ICMP errors for any
// receiver.
//
// Runs cross 64- and 1,400-byte payloads, IPv4 and IPv6, quiet and under a
// flood (a second sender blasting another UDP port and a TCP stream to a
// third, in the same namespace). Rounds are interleaved: each round goes
// through every run, and within a run through every receiver, the order
// rotated by one each round. Each round ends with a ping-pong phase: 1,000
// round trips, one at a time, through a net.UDPConn echo server, a
// net.UDPConn+chan one and a udpstream server answering with
// Packet.Reply. Each server says at its end what answering cost it: its
// CPU time and context switches from when it was ready, which the table
// gives per request (sent, warm-up included) and, for the CPU, as a ratio
// to net.UDPConn+chan's; on a VM most of that CPU is threads being woken.
//
// For each receiver and run it prints delivered datagrams per second; loss
// (sent less delivered); the receiver's CPU per delivered datagram and its
// context switches per datagram (how often it went to sleep and had to be
// woken); the CPU of the sending thread and the receiver together per
// delivered datagram (on loopback the kernel's delivery work runs on the
// sending thread, so this is nearly the traffic's whole cost, and it does
// not depend on other load on the machine); and the whole machine's CPU per delivered
// datagram, from /proc/stat over the run (every process: also other load
// on the machine). Each figure's ratio to net.UDPConn's in the same round
// follows it. Figures are medians over the rounds, ratios medians of the
// per-round ratios. The receiver's CPU is also given as a ratio to each
// floor's in the same round ("x ring+chan-floor" and so on; JSON
// recv_cpu_ratio_to_floors), and the ping-pong's p50 and p99 as ratios
// to net.UDPConn and to net.UDPConn+chan ("x +chan").
// Absolute figures are noise on a shared machine;
// ratios in one round are the result. Pass/fail lines for the project's
// targets follow the table, and everything is written as JSON to
// -json-out, each measurement with its raw counts and times.
//
// # Many sources
//
//	cd bench && go run . -sources 1,1000,100000 -fragmented 0,10 -sizes 64 -flood off
//
// -sources replaces the ordinary runs with runs whose datagrams come from
// that many distinct source addresses in turn (127.1.0.1 on for IPv4,
// all this host's on loopback; fd00:b::1 on for IPv6, which loopback
// delivers from like any source but ::1), each list entry a run of its
// own; -fragmented gives the percentages of datagrams sent in two
// fragments, spread evenly. The bench builds these datagrams whole, UDP
// checksum included, and sends them on a raw socket (IPPROTO_RAW,
// sendmmsg, 64 messages a call), one source included, so that the runs
// differ in their sources alone. The kernel has not vouched for their
// checksums, so every receiver that checks them computes them: figures
// are not comparable with the ordinary runs'. The floors read only
// unfragmented datagrams: in a fragmented run they lose the fragmented
// ones and their CPU is per datagram they read. The target "many sources
// <= 1.2x one source" sets udpstream's CPU per datagram against its own
// in the one-source run of the same size, family and share fragmented,
// in the same round.
//
// # The capture comparison
//
//	cd bench && go run . -capture          # 3 rounds of 200,000 datagrams
//	cd bench && go run . -capture -quick   # a smoke run
//
// -capture runs, instead of the receivers above, the udpstream command
// (built once per bench run from ../cmd/udpstream) and tcpdump, each as a
// process of its own, started as a user would start it:
//
//   - cmd-json: udpstream -port P -json > FILE
//   - cmd-pcapng: udpstream -port P -w FILE, its lines to /dev/null
//   - tcpdump: tcpdump -i bcap0 -w FILE udp dst port P, without -U:
//     its default buffering is what users run. The bench holds the
//     port meanwhile, as the command does, so that the kernel answers
//     no datagram with ICMP.
//
// It needs root and tcpdump (Debian's package; CI installs it). The
// traffic crosses a veth pair: the near end, bcap0 (10.201.0.1,
// fd00:201::1), in the bench's namespace, where the captures run; the
// far end in a second namespace the orchestrator creates for the
// sender's socket alone, so that the datagrams come in from a link, as
// from another host, and not through loopback. Both ends have permanent
// neighbour entries, so that no datagram waits for ARP.
//
// Each round goes through every run (64-byte payloads over IPv4 unless
// -sizes and -families say otherwise) and within it through the three
// captures, the order rotated by one each round. Each capture is started
// and waited for until it says it listens on its standard error; then the
// sender blasts the burst; once the capture's file and its CPU time have
// not grown for -quiet (2 s, longer than tcpdump's 1 s ring block
// timeout), the capture is stopped with SIGINT, as with Ctrl-C, and its
// file counted with the bench's own readers (JSON lines; pcap and pcapng).
// The table gives what each kept per round, the median, the ratio to
// tcpdump's kept in the same round, and the capture process's CPU time
// per datagram kept; the verdict "command keeps at least as many as
// tcpdump -w" is judged per output kind and passes when the command kept
// at least as many as tcpdump in every round. All of it, with what each
// tool said of its own drops when it stopped, goes into the JSON
// results, under "capture".
//
// The receiver role takes -cpuprofile; -cpuprofile-dir DIR makes every
// receiver process write one, named after its run, receiver and round.
package main
