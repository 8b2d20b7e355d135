// Package netns starts processes in Linux user and network namespaces of
// their own. The demo, the tests and the benchmark use it so that their
// traffic never touches the host's network, and so that they need no root:
// in a new user namespace a process has CAP_NET_RAW and CAP_NET_ADMIN over
// the network namespaces it owns.
package netns

import (
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// UserNS returns process attributes that start a child in a new user
// namespace, and in the other new namespaces named by extra (such as
// syscall.CLONE_NEWNET), in which the child is root.
func UserNS(extra uintptr) *syscall.SysProcAttr {
	return &syscall.SysProcAttr{
		Cloneflags:  syscall.CLONE_NEWUSER | extra,
		UidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getuid(), Size: 1}},
		GidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getgid(), Size: 1}},
	}
}

// LoopbackUp brings up the loopback interface, which a new network
// namespace has down and without 127.0.0.1 and ::1. An ioctl does it, so
// no external command is needed.
func LoopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return os.NewSyscallError("socket", err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return os.NewSyscallError("ioctl SIOCGIFFLAGS", err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return os.NewSyscallError("ioctl SIOCSIFFLAGS", err)
	}
	return nil
}
