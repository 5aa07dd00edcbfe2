// Command probe is the one static program in the testbed's images: the node's pause
// (sandbox) process, a memory eater for OOM tests, and a reporter of the credentials a
// container really runs with. It uses the standard library only, so it needs no base image.
//
//	probe pause                     sleep until SIGTERM or SIGINT, then exit 0
//	probe eat [MiB]                 allocate and touch memory 1 MiB at a time until killed
//	                                (exit 3 when MiB, default 4096, were taken without a kill)
//	probe copy DEST                 copy this program to DEST (mode 0755)
//	probe inspect [--exec CMD ARG...]
//	                                write uid, gid, capabilities, no_new_privs, seccomp mode and
//	                                the result of writing to / to /dev/termination-log and
//	                                stdout, then exec CMD (same process, same credentials)
package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
)

func main() {
	if len(os.Args) < 2 {
		fail("usage: probe pause | eat [MiB] | copy DEST | inspect [--exec CMD ARG...]")
	}
	switch os.Args[1] {
	case "pause":
		pause()
	case "eat":
		eat(os.Args[2:])
	case "copy":
		if len(os.Args) != 3 {
			fail("usage: probe copy DEST")
		}
		copySelf(os.Args[2])
	case "inspect":
		inspect(os.Args[2:])
	default:
		fail("unknown command " + os.Args[1])
	}
}

func fail(msg string) {
	fmt.Fprintln(os.Stderr, "probe:", msg)
	os.Exit(2)
}

func pause() {
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	<-signals
}

// eat keeps every chunk reachable and writes one byte per page, so the memory is really
// resident and charged to the container's memory cgroup.
func eat(args []string) {
	limit := 4096
	if len(args) > 0 {
		n, err := strconv.Atoi(args[0])
		if err != nil || n <= 0 {
			fail("eat: not a positive number of MiB: " + args[0])
		}
		limit = n
	}
	const chunk = 1 << 20
	held := make([][]byte, 0, limit)
	for i := 1; i <= limit; i++ {
		b := make([]byte, chunk)
		for p := 0; p < chunk; p += 4096 {
			b[p] = 1
		}
		held = append(held, b)
		if i%16 == 0 {
			fmt.Printf("eat: %d MiB resident\n", i)
		}
	}
	fmt.Printf("eat: %d MiB taken and not killed\n", len(held))
	os.Exit(3)
}

func copySelf(dest string) {
	src, err := os.Open("/proc/self/exe")
	if err != nil {
		fail("copy: " + err.Error())
	}
	defer src.Close()
	dst, err := os.OpenFile(dest, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o755)
	if err != nil {
		fail("copy: " + err.Error())
	}
	if _, err := io.Copy(dst, src); err != nil {
		fail("copy: " + err.Error())
	}
	if err := dst.Close(); err != nil {
		fail("copy: " + err.Error())
	}
}

func inspect(args []string) {
	var report strings.Builder
	fmt.Fprintf(&report, "uid=%d\ngid=%d\n", os.Getuid(), os.Getgid())
	status, err := os.Open("/proc/self/status")
	if err != nil {
		fail("inspect: " + err.Error())
	}
	scanner := bufio.NewScanner(status)
	for scanner.Scan() {
		key, value, ok := strings.Cut(scanner.Text(), ":")
		switch key {
		case "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp":
			if ok {
				fmt.Fprintf(&report, "%s=%s\n", key, strings.TrimSpace(value))
			}
		}
	}
	status.Close()
	if f, err := os.Create("/probe-write-test"); err != nil {
		fmt.Fprintf(&report, "rootfs_write=%v\n", err)
	} else {
		f.Close()
		os.Remove("/probe-write-test")
		report.WriteString("rootfs_write=ok\n")
	}
	fmt.Print(report.String())
	if err := os.WriteFile("/dev/termination-log", []byte(report.String()), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, "probe: inspect: termination log:", err)
	}
	if len(args) == 0 {
		return
	}
	if args[0] != "--exec" || len(args) < 2 {
		fail("usage: probe inspect [--exec CMD ARG...]")
	}
	if err := syscall.Exec(args[1], args[1:], os.Environ()); err != nil {
		fail("inspect: exec " + args[1] + ": " + err.Error())
	}
}
