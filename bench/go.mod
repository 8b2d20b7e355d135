module github.com/udpstream/udpstream/bench

go 1.26.0

replace github.com/udpstream/udpstream => ../

require (
	github.com/google/gopacket v1.1.19
	github.com/udpstream/udpstream v0.0.0-00010101000000-000000000000
	golang.org/x/net v0.62.0
	golang.org/x/sys v0.50.0
)

require golang.org/x/sync v0.25.0 // indirect
