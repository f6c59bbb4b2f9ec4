package wire

import (
	"encoding/binary"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"unsafe"

	"golang.org/x/sys/unix"

	pb "stagecoach/proto/compute"
)

// Region is a shared-memory region both ends of the compute protocol map
// (see compute.proto, "Shared memory"): a call's tensor bytes are copied
// into it by the sender and out of it by the receiver, and gRPC carries
// only the request and response.
type Region struct {
	b    []byte
	f    *os.File
	path string
}

// CreateRegion makes a region of size bytes in a new file of dir (the
// client's side). Its space is reserved at once (fallocate), so a full
// tmpfs fails here rather than with SIGBUS on a later write.
func CreateRegion(dir string, size int64) (*Region, error) {
	if size < 1 || size > MaxRegionBytes {
		return nil, fmt.Errorf("shared region: %d bytes, want 1..%d", size, MaxRegionBytes)
	}
	f, err := os.CreateTemp(dir, "stagecoach-compute-*.shm")
	if err != nil {
		return nil, err
	}
	if err := unix.Fallocate(int(f.Fd()), 0, 0, size); err != nil {
		f.Close()
		os.Remove(f.Name())
		return nil, fmt.Errorf("shared region %s: reserve %d bytes: %v", f.Name(), size, err)
	}
	return mapRegion(f, size)
}

// OpenRegion maps the region a client offered (the server's side): the
// file must hold at least size bytes.
func OpenRegion(path string, size int64) (*Region, error) {
	if size < 1 || size > MaxRegionBytes {
		return nil, fmt.Errorf("shared region: %d bytes, want 1..%d", size, MaxRegionBytes)
	}
	if !filepath.IsAbs(path) {
		return nil, fmt.Errorf("shared region %q: not an absolute path", path)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil || !st.Mode().IsRegular() || st.Size() < size {
		f.Close()
		return nil, fmt.Errorf("shared region %s: not a regular file of %d bytes", path, size)
	}
	return mapRegion(f, size)
}

func mapRegion(f *os.File, size int64) (*Region, error) {
	b, err := unix.Mmap(int(f.Fd()), 0, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("shared region %s: map: %v", f.Name(), err)
	}
	return &Region{b: b, f: f, path: f.Name()}, nil
}

// MaxRegionBytes bounds a shared region.
const MaxRegionBytes = 1 << 34

// Path is the region's file.
func (r *Region) Path() string { return r.path }

// Size is the region's length.
func (r *Region) Size() int64 { return int64(len(r.b)) }

// Unlink removes the region's file name (both ends keep their mapping).
func (r *Region) Unlink() { _ = os.Remove(r.path) }

// Close unmaps the region.
func (r *Region) Close() error {
	if r == nil || r.b == nil {
		return nil
	}
	err := unix.Munmap(r.b)
	r.b = nil
	r.f.Close()
	return err
}

// Fits reports whether vals fit the region back to back.
func (r *Region) Fits(vals []Value) bool {
	if r == nil {
		return false
	}
	var total int64
	for _, v := range vals {
		n, err := Elems(v.Meta.GetShape())
		if err != nil {
			return false
		}
		total += 4 * n
	}
	return total <= int64(len(r.b))
}

// Put writes vals' bytes back to back from offset 0 (little-endian, as
// chunks carry them). Each value's data must match its shape.
func (r *Region) Put(vals []Value) error {
	off := 0
	for _, v := range vals {
		n, err := v.elems()
		if err != nil {
			return err
		}
		if int64(off)+4*n > int64(len(r.b)) {
			return fmt.Errorf("tensors of %d bytes and more do not fit the %d-byte shared region", int64(off)+4*n, len(r.b))
		}
		off += copy(r.b[off:], v.encode())
	}
	return nil
}

// Get reads the tensors metas declares (passed through Check, which gave
// sizes) from the region, back to back from offset 0, into memory of
// their own.
func (r *Region) Get(metas []*pb.TensorMeta, sizes []int64) ([]Value, error) {
	return r.get(metas, sizes, false, nil)
}

// GetInto is Get with float32 tensors copied into memory from alloc.
func (r *Region) GetInto(metas []*pb.TensorMeta, sizes []int64, alloc Alloc) ([]Value, error) {
	return r.get(metas, sizes, false, alloc)
}

// Borrow is Get with float32 tensors left in the region: their values are
// views of it, valid until the region's next Put or Close (the caller's
// call). Int32 tensors are copied as by Get. It saves a copy into fresh
// memory per tensor for a receiver that reads its inputs only during the
// call.
func (r *Region) Borrow(metas []*pb.TensorMeta, sizes []int64) ([]Value, error) {
	return r.get(metas, sizes, littleEndian, nil)
}

func (r *Region) get(metas []*pb.TensorMeta, sizes []int64, borrow bool, alloc Alloc) ([]Value, error) {
	var total, have int64
	for _, s := range sizes {
		total += s
	}
	if r != nil {
		have = int64(len(r.b))
	}
	if total > have {
		return nil, fmt.Errorf("%w: %d bytes of tensors declared in a shared region of %d", ErrMalformed, total, have)
	}
	vals := make([]Value, len(metas))
	off := int64(0)
	for i, m := range metas {
		vals[i].Meta = m
		n := int(sizes[i] / 4)
		src := r.b[off : off+sizes[i]]
		off += sizes[i]
		if m.Dtype == pb.DType_DTYPE_INT32 {
			vals[i].I32 = make([]int32, n)
			if littleEndian {
				copy(asBytes(vals[i].I32), src)
			} else {
				for j := range n {
					vals[i].I32[j] = int32(binary.LittleEndian.Uint32(src[4*j:]))
				}
			}
			continue
		}
		if borrow && n > 0 && uintptr(unsafe.Pointer(&src[0]))%4 == 0 {
			vals[i].F32 = unsafe.Slice((*float32)(unsafe.Pointer(&src[0])), n)
			continue
		}
		vals[i].F32 = alloc.f32(n)
		if littleEndian {
			copy(asBytes(vals[i].F32), src)
		} else {
			for j := range n {
				vals[i].F32[j] = math.Float32frombits(binary.LittleEndian.Uint32(src[4*j:]))
			}
		}
	}
	return vals, nil
}
