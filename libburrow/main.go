// Command libburrow is burrow's client as a C library (see burrow.h): an
// app pairs with devices and opens tunnels to their services in its own
// process, from C, C++, Swift, Kotlin (JNI) or Python (ctypes). Build it
// with go build -buildmode=c-shared or -buildmode=c-archive.
//
// It is a thin boundary over package client: it turns C strings and ints
// into calls of [client.Client] and the client home ([client.Home]) and
// their results into handles, file descriptors and messages. It must not
// decide anything package client decides (which devices, which relay, how
// a tunnel is opened), nor let a Go panic or a Go pointer cross into C.
package main

/*
#include <stddef.h>
*/
import "C"

import (
	"errors"
	"fmt"
	"unsafe"
)

// main is not run: the package is built as a library.
func main() {}

// goString copies a C string; NULL is an error naming the argument.
func goString(s *C.char, arg string) (string, error) {
	if s == nil {
		return "", fmt.Errorf("%s is NULL", arg)
	}
	return C.GoString(s), nil
}

// optString copies a C string; NULL is "".
func optString(s *C.char) string {
	if s == nil {
		return ""
	}
	return C.GoString(s)
}

//export burrow_client_new
func burrow_client_new(home *C.char) C.int {
	return C.int(call(0, func() (int32, error) {
		lc, err := newClient(optString(home))
		if err != nil {
			return -1, err
		}
		h := add(lc)
		if h == 0 {
			lc.close(func(int32) {})
			return -1, errors.New("no handle is left: close clients and forwards that are done")
		}
		return h, nil
	}))
}

//export burrow_client_lan
func burrow_client_lan(client C.int, on C.int) C.int {
	h := int32(client)
	return C.int(call(h, func() (int32, error) {
		lc, err := lookup[*libClient](h, "client")
		if err != nil {
			return -1, err
		}
		return 0, lc.setLAN(on != 0)
	}))
}

//export burrow_pair
func burrow_pair(client C.int, invite, name *C.char) C.int {
	h := int32(client)
	return C.int(call(h, func() (int32, error) {
		lc, err := lookup[*libClient](h, "client")
		if err != nil {
			return -1, err
		}
		inv, err := goString(invite, "invite")
		if err != nil {
			return -1, err
		}
		return 0, lc.pair(inv, optString(name))
	}))
}

// serviceArgs returns the client of handle h and the device and service
// named, for a call that reaches a service.
func serviceArgs(h int32, device, service *C.char) (lc *libClient, dev, svc string, err error) {
	if lc, err = lookup[*libClient](h, "client"); err != nil {
		return nil, "", "", err
	}
	if dev, err = goString(device, "device"); err != nil {
		return nil, "", "", err
	}
	if svc, err = goString(service, "service"); err != nil {
		return nil, "", "", err
	}
	return lc, dev, svc, nil
}

//export burrow_dial
func burrow_dial(client C.int, device, service *C.char, connFD *C.int) C.int {
	h := int32(client)
	return C.int(call(h, func() (int32, error) {
		lc, dev, svc, err := serviceArgs(h, device, service)
		if err != nil {
			return -1, err
		}
		if connFD == nil {
			return -1, errors.New("conn_fd is NULL: pass the address of an int to receive the socket")
		}
		fd, err := lc.dial(dev, svc)
		if err != nil {
			return -1, err
		}
		*connFD = C.int(fd)
		return 0, nil
	}))
}

//export burrow_forward
func burrow_forward(client C.int, device, service, listenAddr *C.char, addrOut *C.char, addrLen C.size_t) C.int {
	h := int32(client)
	return C.int(call(h, func() (int32, error) {
		lc, dev, svc, err := serviceArgs(h, device, service)
		if err != nil {
			return -1, err
		}
		if addrOut == nil || addrLen == 0 {
			return -1, errors.New("addr_out is NULL or addr_len is 0: pass a buffer for the bound address (64 bytes are enough)")
		}
		fh, addr, err := lc.forward(dev, svc, optString(listenAddr), int(min(addrLen, 1<<20)), func(f *libForward) (int32, error) {
			if fh := add(f); fh != 0 {
				return fh, nil
			}
			return 0, errors.New("no handle is left: close clients and forwards that are done")
		})
		if err != nil {
			return -1, err
		}
		out := unsafe.Slice((*byte)(unsafe.Pointer(addrOut)), len(addr)+1)
		copy(out, addr)
		out[len(addr)] = 0
		return fh, nil
	}))
}

//export burrow_close
func burrow_close(handle C.int) C.int {
	h := int32(handle)
	return C.int(call(h, func() (int32, error) {
		obj, ok := remove(h)
		if !ok {
			_, err := lookup[any](h, "")
			return -1, err
		}
		switch obj := obj.(type) {
		case *libClient:
			obj.close(func(fh int32) { remove(fh) })
		case *libForward:
			obj.stop(h)
		}
		return 0, nil
	}))
}

//export burrow_errmsg
func burrow_errmsg(handle C.int, buf *C.char, n C.size_t) C.int {
	// Its own failures keep no message: they would replace the one asked
	// for (that of handle 0, say).
	return C.int(callQuiet(func() int32 {
		msg, ok := message(int32(handle))
		if !ok || buf == nil || n == 0 {
			return -1
		}
		out := unsafe.Slice((*byte)(unsafe.Pointer(buf)), int(n))
		k := copy(out[:n-1], msg)
		out[k] = 0
		return int32(min(len(msg), 1<<31-1))
	}))
}
