package sgemm

import (
	"fmt"
	"os"
	"runtime"
	"sync"

	"gonum.org/v1/gonum/blas"
	"gonum.org/v1/gonum/blas/gonum"

	"stagecoach/internal/parallel"
)

// Blocking. mr×nr is the micro-kernel's register tile; kcBlock×nr floats of
// B (16 KiB) stay in L1 while a panel is in use, mcBlock×kcBlock floats of
// A (96 KiB) in L2, and the packed kcBlock×ncBlock slab of B in L3. The
// values are constants so that the order of every sum depends only on the
// shape.
const (
	mr      = 6
	nr      = 16
	kcBlock = 256
	mcBlock = 96   // multiple of mr
	ncBlock = 4096 // multiple of nr
	ncTile  = 256  // columns of one unit of parallel work, multiple of nr
	// aliasStride floats (4 KiB): rows a multiple of it apart all fall in
	// one L1 set (L1's sets repeat every 4 KiB) and in few L2 sets.
	aliasStride = 1024

	// Below this many multiply-adds a product runs on the calling
	// goroutine: starting goroutines would cost more than they save.
	minParallel = 1 << 21
)

// EnvVar names the environment variable that selects the kernel: "go"
// forces gonum's pure-Go Sgemm, "avx2" the AVX2 kernel even where
// AVX-512 is available, and "" or "asm" the widest assembly kernel the CPU
// runs (AVX-512, else AVX2 and FMA). The assembly kernels give the same
// bits as each other.
const EnvVar = "STAGECOACH_GEMM"

var (
	modeErr   error
	mode      = envMode() // first: it checks the value on every CPU
	useKernel = mode != "go" && hasKernel
	useWide   = useKernel && mode != "avx2" && hasWide
)

func envMode() string {
	v := os.Getenv(EnvVar)
	switch v {
	case "", "asm", "avx2", "go":
		return v
	}
	modeErr = fmt.Errorf("%s=%q: want \"go\" (gonum's pure-Go kernel), \"avx2\" (the AVX2/FMA kernel) or \"asm\" (the widest the CPU has)", EnvVar, v)
	return ""
}

// CheckEnv reports an unknown value of STAGECOACH_GEMM (which is otherwise
// ignored), so a command can refuse to start with a clear message.
func CheckEnv() error { return modeErr }

// Kernel names the kernel Implementation.Sgemm uses by default in this
// process: "avx512", "avx2-fma" or "gonum".
func Kernel() string {
	switch {
	case useWide:
		return "avx512"
	case useKernel:
		return "avx2-fma"
	}
	return "gonum"
}

// Implementation is gonum's pure-Go BLAS with Sgemm replaced by this
// package's kernel; register it with blas32.Use. The zero value uses
// GOMAXPROCS goroutines and the kernel Kernel names.
type Implementation struct {
	gonum.Implementation
	// Threads bounds the goroutines one Sgemm call uses; 0 means
	// GOMAXPROCS. Results do not depend on it.
	Threads int
	// PureGo forces gonum's Sgemm.
	PureGo bool
	// narrow keeps to the AVX2 kernel where AVX-512 is available (tests
	// compare the two).
	narrow bool
}

// Sgemm computes C = alpha·op(A)·op(B) + beta·C for row-major matrices, with
// the argument conventions and checks of gonum's blas32 (bad arguments
// panic with gonum's messages). With beta = 0, C is not read.
func (im Implementation) Sgemm(tA, tB blas.Transpose, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int) {
	if im.PureGo || !useKernel || !valid(tA, tB, m, n, k, a, lda, b, ldb, c, ldc) {
		// gonum computes the product, or panics with its message on
		// arguments valid rejects.
		im.Implementation.Sgemm(tA, tB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
		return
	}
	if m == 0 || n == 0 {
		return
	}
	p := problem{
		aT: tA != blas.NoTrans, bT: tB != blas.NoTrans,
		m: m, n: n, k: k, alpha: alpha, beta: beta,
		a: a, lda: lda, b: b, ldb: ldb, c: c, ldc: ldc,
		wide: useWide && !im.narrow,
	}
	if alpha == 0 || k == 0 {
		p.scaleC()
		return
	}
	threads := im.Threads
	if threads <= 0 {
		threads = runtime.GOMAXPROCS(0)
	}
	if m*n*k < minParallel {
		threads = 1
	}
	p.run(threads)
}

// valid mirrors gonum's argument checks.
func valid(tA, tB blas.Transpose, m, n, k int, a []float32, lda int, b []float32, ldb int, c []float32, ldc int) bool {
	okT := func(t blas.Transpose) bool { return t == blas.NoTrans || t == blas.Trans || t == blas.ConjTrans }
	if !okT(tA) || !okT(tB) || m < 0 || n < 0 || k < 0 {
		return false
	}
	aRows, aCols := m, k
	if tA != blas.NoTrans {
		aRows, aCols = k, m
	}
	bRows, bCols := k, n
	if tB != blas.NoTrans {
		bRows, bCols = n, k
	}
	if lda < max(1, aCols) || ldb < max(1, bCols) || ldc < max(1, n) {
		return false
	}
	if m == 0 || n == 0 {
		return true
	}
	// The same length formulas as gonum (which, e.g., ask for (m-1)·lda
	// elements of A even when k = 0).
	return len(a) >= (aRows-1)*lda+aCols && len(b) >= (bRows-1)*ldb+bCols && len(c) >= (m-1)*ldc+n
}

type problem struct {
	aT, bT      bool
	m, n, k     int
	alpha, beta float32
	a, b, c     []float32
	lda, ldb    int
	ldc         int
	// wide pairs full B micro-panels in the AVX-512 kernel.
	wide bool
}

// scaleC sets C = beta·C (zero, not multiplied, when beta is zero).
func (p *problem) scaleC() {
	if p.beta == 1 {
		return
	}
	for i := 0; i < p.m; i++ {
		row := p.c[i*p.ldc : i*p.ldc+p.n]
		if p.beta == 0 {
			clear(row)
			continue
		}
		for j := range row {
			row[j] *= p.beta
		}
	}
}

func (p *problem) run(threads int) {
	if p.beta != 0 && p.beta != 1 {
		p.scaleC()
	}
	bp := getBuf(kcBlock * min(ncBlock, roundUp(p.n, nr)))
	defer putBuf(bp)
	// Per-worker scratch for the tiles: a packed A block, taken from the
	// pool on first use, and which row block it holds.
	ws := make([]struct {
		ap     *[]float32
		packed int
	}, threads)
	defer func() {
		for _, s := range ws {
			if s.ap != nil {
				putBuf(s.ap)
			}
		}
	}()
	for jc := 0; jc < p.n; jc += ncBlock {
		nc := min(ncBlock, p.n-jc)
		panels := (nc + nr - 1) / nr
		for pc := 0; pc < p.k; pc += kcBlock {
			kc := min(kcBlock, p.k-pc)
			// The first slab overwrites C unless beta asks to keep it;
			// later slabs add to it, in ascending k.
			load := pc > 0 || p.beta != 0
			parallel.Steal(threads, panels, func(_, jp int) {
				if cols := min(nr, nc-jp*nr); cols < nr || !p.directB() {
					p.packB((*bp)[jp*kc*nr:(jp+1)*kc*nr], pc, kc, jc+jp*nr, cols)
				}
			})
			mBlocks := (p.m + mcBlock - 1) / mcBlock
			nTiles := (nc + ncTile - 1) / ncTile
			// Each worker keeps its packed A block while its tiles stay
			// in one row block: a worker walks its own tiles in order and
			// takes another's from the end, so it repacks rarely.
			for w := range ws {
				ws[w].packed = -1
			}
			parallel.Steal(threads, mBlocks*nTiles, func(w, t int) {
				ib, jt := t/nTiles, t%nTiles
				ic := ib * mcBlock
				mc := min(mcBlock, p.m-ic)
				s := &ws[w]
				if ib != s.packed {
					if s.ap == nil {
						s.ap = getBuf(mcBlock * kcBlock)
					}
					p.packA(*s.ap, ic, mc, pc, kc, p.directA(nc))
					s.packed = ib
				}
				jp0 := jt * (ncTile / nr)
				jp1 := min(panels, jp0+ncTile/nr)
				p.macro(*s.ap, *bp, ic, mc, jc, nc, jp0, jp1, pc, kc, load)
			})
		}
	}
}

// directA reports whether full A micro-panels are read in place instead
// of packed: for a narrow slab (nc columns) each packed element would be
// used by too few kernel calls to repay its copy. A transposed A whose
// rows lie a multiple of aliasStride floats apart is packed all the same:
// the kc rows one micro-panel reads would evict each other before the
// next panel of B reads them again (a weight gradient with 1024 hidden
// units ran 20% slower in place; at 512 in place was faster). directB
// likewise for B (untransposed only) when C has at most one block of
// rows. Either choice changes where the kernel reads, never the
// arithmetic.
func (p *problem) directA(nc int) bool {
	return nc <= ncTile && !(p.aT && p.lda%aliasStride == 0)
}
func (p *problem) directB() bool { return !p.bT && p.m <= mcBlock }

// aPanel returns the kernel's view of A micro-panel ip of the block at
// rows ic (its first element and strides): in place, or packed in ap.
func (p *problem) aPanel(ap []float32, ic, ip, pc, kc int, direct bool) (*float32, int, int) {
	if !direct {
		return &ap[ip*kc*mr], 1, mr
	}
	r0 := ic + ip*mr
	if p.aT {
		return &p.a[pc*p.lda+r0], 1, p.lda
	}
	return &p.a[r0*p.lda+pc], p.lda, 1
}

// macro multiplies the A block (rows ic..ic+mc, packed in ap unless read
// in place) by the B panels jp0..jp1 of the slab starting at column jc,
// into C.
func (p *problem) macro(ap, bp []float32, ic, mc, jc, nc, jp0, jp1, pc, kc int, load bool) {
	dA, dB := p.directA(nc), p.directB()
	for jp := jp0; jp < jp1; jp++ {
		cols := min(nr, nc-jp*nr)
		bpan, bs := &bp[jp*kc*nr], nr
		if dB && cols == nr {
			bpan, bs = &p.b[pc*p.ldb+jc+jp*nr], p.ldb
		}
		if p.wide && jp+1 < jp1 && nc-(jp+1)*nr >= nr {
			// Two full panels side by side: their full tiles in one
			// AVX-512 call (the second panel, like the first, is read
			// in place or packed), a short last row block as below.
			bpan1 := &bp[(jp+1)*kc*nr]
			if dB {
				bpan1 = &p.b[pc*p.ldb+jc+(jp+1)*nr]
			}
			for ip := 0; ip*mr < mc; ip++ {
				rows := min(mr, mc-ip*mr)
				apan, rs, ps := p.aPanel(ap, ic, ip, pc, kc, dA && rows == mr)
				ci := (ic+ip*mr)*p.ldc + jc + jp*nr
				if rows == mr {
					kernel6x32(kc, apan, rs, ps, bpan, bpan1, bs, &p.c[ci], p.ldc, p.alpha, load)
					continue
				}
				p.edge(apan, rs, ps, bpan, bs, ci, rows, nr, kc, load)
				p.edge(apan, rs, ps, bpan1, bs, ci+nr, rows, nr, kc, load)
			}
			jp++
			continue
		}
		for ip := 0; ip*mr < mc; ip++ {
			rows := min(mr, mc-ip*mr)
			apan, rs, ps := p.aPanel(ap, ic, ip, pc, kc, dA && rows == mr)
			ci := (ic+ip*mr)*p.ldc + jc + jp*nr
			if rows == mr && cols == nr {
				kernel6x16(kc, apan, rs, ps, bpan, bs, &p.c[ci], p.ldc, p.alpha, load)
				continue
			}
			p.edge(apan, rs, ps, bpan, bs, ci, rows, cols, kc, load)
		}
	}
}

// edge computes a tile of C cut by the bottom or right edge (rows×cols
// at ci) through a full scratch tile.
func (p *problem) edge(apan *float32, rs, ps int, bpan *float32, bs, ci, rows, cols, kc int, load bool) {
	var t [mr * nr]float32
	kernel6x16(kc, apan, rs, ps, bpan, bs, &t[0], nr, 1, false)
	for i := 0; i < rows; i++ {
		row := p.c[ci+i*p.ldc : ci+i*p.ldc+cols]
		for j := range row {
			v := p.alpha * t[i*nr+j]
			if load {
				v += row[j]
			}
			row[j] = v
		}
	}
}

// packA copies op(A)[ic:ic+mc, pc:pc+kc] into micro-panels of mr rows, each
// stored k-major (mr values per k), padding short panels with zeros. With
// edgeOnly it packs only a short last panel (the others are read in place).
func (p *problem) packA(dst []float32, ic, mc, pc, kc int, edgeOnly bool) {
	for ip := 0; ip*mr < mc; ip++ {
		r0 := ic + ip*mr
		rows := min(mr, mc-ip*mr)
		if edgeOnly && rows == mr {
			continue
		}
		d := dst[ip*kc*mr : (ip+1)*kc*mr]
		if p.aT && rows == mr {
			for q := 0; q < kc; q++ {
				src := p.a[(pc+q)*p.lda+r0 : (pc+q)*p.lda+r0+mr : (pc+q)*p.lda+r0+mr]
				o := d[q*mr : q*mr+mr : q*mr+mr]
				o[0], o[1], o[2], o[3], o[4], o[5] = src[0], src[1], src[2], src[3], src[4], src[5]
			}
			continue
		}
		if p.aT {
			for q := 0; q < kc; q++ {
				src := p.a[(pc+q)*p.lda+r0 : (pc+q)*p.lda+r0+rows]
				o := d[q*mr : q*mr+mr]
				copy(o, src)
				clear(o[rows:])
			}
			continue
		}
		if rows < mr {
			for r := 0; r < mr; r++ {
				if r >= rows {
					for q := 0; q < kc; q++ {
						d[q*mr+r] = 0
					}
					continue
				}
				src := p.a[(r0+r)*p.lda+pc : (r0+r)*p.lda+pc+kc]
				for q, v := range src {
					d[q*mr+r] = v
				}
			}
			continue
		}
		// A full panel reads six rows side by side and writes d in order.
		row := func(r int) []float32 { return p.a[(r0+r)*p.lda+pc : (r0+r)*p.lda+pc+kc] }
		s0, s1, s2, s3, s4, s5 := row(0), row(1), row(2), row(3), row(4), row(5)
		for q := range s0 {
			o := d[q*mr : q*mr+mr : q*mr+mr]
			o[0], o[1], o[2], o[3], o[4], o[5] = s0[q], s1[q], s2[q], s3[q], s4[q], s5[q]
		}
	}
}

// packB copies op(B)[pc:pc+kc, j0:j0+cols] into one micro-panel of nr
// columns stored k-major, padding missing columns with zeros.
func (p *problem) packB(d []float32, pc, kc, j0, cols int) {
	if !p.bT {
		if cols == nr && kc > 0 {
			// Bounds: the panel's last element, then the copy in assembly.
			_, _ = d[kc*nr-1], p.b[(pc+kc-1)*p.ldb+j0+nr-1]
			packB16(&d[0], &p.b[pc*p.ldb+j0], p.ldb, kc)
			return
		}
		for q := 0; q < kc; q++ {
			o := d[q*nr : q*nr+nr]
			copy(o, p.b[(pc+q)*p.ldb+j0:(pc+q)*p.ldb+j0+cols])
			clear(o[cols:])
		}
		return
	}
	for j := 0; j < nr; j++ {
		if j >= cols {
			for q := 0; q < kc; q++ {
				d[q*nr+j] = 0
			}
			continue
		}
		src := p.b[(j0+j)*p.ldb+pc : (j0+j)*p.ldb+pc+kc]
		for q, v := range src {
			d[q*nr+j] = v
		}
	}
}

func roundUp(x, m int) int { return (x + m - 1) / m * m }

// bufs pools the packing buffers of every size: a request takes whatever
// buffer the pool hands back if it is large enough and replaces it only
// when it is too small, so the buffers grow to the largest slab asked for
// (see PoolBytes).
var bufs sync.Pool

func getBuf(n int) *[]float32 {
	if b, ok := bufs.Get().(*[]float32); ok && cap(*b) >= n {
		*b = (*b)[:n]
		return b
	}
	b := make([]float32, n)
	return &b
}

func putBuf(b *[]float32) { bufs.Put(b) }

// PoolBytes bounds the bytes the packing buffers hold in the heap of a
// process whose widest product has n columns of C (of any row and inner
// size) and that runs threads goroutines (GOMAXPROCS), between
// collections: a threaded product holds its packed slab of B and one
// block of A per goroutine, 1 + threads buffers, and the model's attention
// runs a serial product on each of threads goroutines, a slab and a block
// each, 2·threads; every buffer in the pool ends up the size of the
// largest request, the widest slab (kcBlock × min(ncBlock, n rounded up
// to nr) floats) or a block of A (mcBlock × kcBlock) if larger. Zero
// when gonum's Sgemm computes the products (no AVX2 kernel, or
// STAGECOACH_GEMM=go).
func PoolBytes(n, threads int) int64 {
	if !useKernel || n < 1 {
		return 0
	}
	buf := int64(kcBlock) * int64(max(min(ncBlock, roundUp(n, nr)), mcBlock)) * 4
	return int64(2*max(threads, 1)) * buf
}
