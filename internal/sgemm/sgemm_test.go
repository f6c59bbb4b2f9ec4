package sgemm

import (
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"strings"
	"testing"

	"gonum.org/v1/gonum/blas"
	"gonum.org/v1/gonum/blas/gonum"
)

var transposes = []blas.Transpose{blas.NoTrans, blas.Trans}

// operands returns random A, B, C for op(A) m×k, op(B) k×n with row strides
// padded by extra columns (so strided access is exercised).
func operands(r *rand.Rand, tA, tB blas.Transpose, m, n, k, pad int) (a []float32, lda int, b []float32, ldb int, c []float32, ldc int) {
	aRows, aCols := m, k
	if tA != blas.NoTrans {
		aRows, aCols = k, m
	}
	bRows, bCols := k, n
	if tB != blas.NoTrans {
		bRows, bCols = n, k
	}
	lda, ldb, ldc = aCols+pad, bCols+pad, n+pad
	lda, ldb, ldc = max(lda, 1), max(ldb, 1), max(ldc, 1)
	fill := func(rows, ld int) []float32 {
		s := make([]float32, rows*ld)
		for i := range s {
			s[i] = float32(r.NormFloat64())
		}
		return s
	}
	return fill(aRows, lda), lda, fill(bRows, ldb), ldb, fill(m, ldc), ldc
}

// checkClose compares got with the exact (float64) value of
// alpha·op(A)·op(B) + beta·C0, bounding each element's error by the float32
// rounding of a k-term sum: 4·(k+2)·eps·(|alpha|·Σ|a||b| + |beta·c0|).
func checkClose(t *testing.T, what string, tA, tB blas.Transpose, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c0, got []float32, ldc int) {
	t.Helper()
	at := func(i, p int) float64 {
		if tA != blas.NoTrans {
			return float64(a[p*lda+i])
		}
		return float64(a[i*lda+p])
	}
	bt := func(p, j int) float64 {
		if tB != blas.NoTrans {
			return float64(b[j*ldb+p])
		}
		return float64(b[p*ldb+j])
	}
	const eps = 1.0 / (1 << 23)
	for i := 0; i < m; i++ {
		for j := 0; j < n; j++ {
			var s, abs float64
			for p := 0; p < k; p++ {
				s += at(i, p) * bt(p, j)
				abs += math.Abs(at(i, p) * bt(p, j))
			}
			want := float64(alpha) * s
			bound := math.Abs(float64(alpha)) * abs
			if beta != 0 {
				want += float64(beta) * float64(c0[i*ldc+j])
				bound += math.Abs(float64(beta) * float64(c0[i*ldc+j]))
			}
			bound = 4*float64(k+2)*eps*bound + 1e-30
			if d := math.Abs(float64(got[i*ldc+j]) - want); !(d <= bound) {
				t.Fatalf("%s tA=%c tB=%c m=%d n=%d k=%d alpha=%g beta=%g: C[%d,%d] = %g, want %g (error %g > bound %g)",
					what, tA, tB, m, n, k, alpha, beta, i, j, got[i*ldc+j], want, d, bound)
			}
		}
	}
	// Padding columns of C are untouched.
	for i := 0; i < m; i++ {
		for j := n; j < ldc && i*ldc+j < len(got); j++ {
			if got[i*ldc+j] != c0[i*ldc+j] {
				t.Fatalf("%s m=%d n=%d k=%d: padding C[%d,%d] written", what, m, n, k, i, j)
			}
		}
	}
}

func TestAgreesWithGonumOnRandomShapes(t *testing.T) {
	if !hasKernel {
		t.Skip("no AVX2/FMA kernel on this CPU")
	}
	seed := uint64(1)
	r := rand.New(rand.NewPCG(seed, 7))
	dims := []int{1, 2, 5, 6, 7, 15, 16, 17, 31, 33, 95, 96, 97, 130, 257, 300}
	for trial := 0; trial < 120; trial++ {
		m, n, k := dims[r.IntN(len(dims))], dims[r.IntN(len(dims))], dims[r.IntN(len(dims))]
		tA, tB := transposes[r.IntN(2)], transposes[r.IntN(2)]
		alphas := []float32{1, 1, -0.5, 2.5}
		betas := []float32{0, 1, 0.5, -2}
		alpha, beta := alphas[r.IntN(len(alphas))], betas[r.IntN(len(betas))]
		a, lda, b, ldb, c, ldc := operands(r, tA, tB, m, n, k, r.IntN(3))
		c0 := append([]float32(nil), c...)
		Implementation{Threads: 2}.Sgemm(tA, tB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
		checkClose(t, "kernel", tA, tB, m, n, k, alpha, a, lda, b, ldb, beta, c0, c, ldc)
		ref := append([]float32(nil), c0...)
		gonum.Implementation{}.Sgemm(tA, tB, m, n, k, alpha, a, lda, b, ldb, beta, ref, ldc)
		checkClose(t, "gonum", tA, tB, m, n, k, alpha, a, lda, b, ldb, beta, c0, ref, ldc)
	}
}

func TestBitIdenticalAcrossThreadCounts(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 3))
	shapes := [][3]int{{200, 300, 257}, {97, 1000, 600}, {7, 4200, 300}, {1030, 17, 513}, {384, 512, 256}}
	for _, s := range shapes {
		m, n, k := s[0], s[1], s[2]
		for _, tA := range transposes {
			for _, tB := range transposes {
				a, lda, b, ldb, c0, ldc := operands(r, tA, tB, m, n, k, 1)
				var first []float32
				for _, threads := range []int{1, 2, 3, 7} {
					c := append([]float32(nil), c0...)
					Implementation{Threads: threads}.Sgemm(tA, tB, m, n, k, 1, a, lda, b, ldb, 1, c, ldc)
					if first == nil {
						first = c
						checkSampled(t, tA, tB, m, n, k, a, lda, b, ldb, c0, c, ldc)
						continue
					}
					for i := range c {
						if math.Float32bits(c[i]) != math.Float32bits(first[i]) {
							t.Fatalf("tA=%c tB=%c %dx%dx%d: %d threads give C[%d] = %g, 1 thread %g", tA, tB, m, n, k, threads, i, c[i], first[i])
						}
					}
				}
			}
		}
	}
}

// checkSampled checks a few elements of C = op(A)·op(B) + C0 against a
// float64 sum (the full check is too slow for these shapes), so the
// identity test cannot pass on a result that is identically wrong.
func checkSampled(t *testing.T, tA, tB blas.Transpose, m, n, k int, a []float32, lda int, b []float32, ldb int, c0, got []float32, ldc int) {
	t.Helper()
	const eps = 1.0 / (1 << 23)
	for _, ij := range [][2]int{{0, 0}, {m - 1, n - 1}, {m / 2, n / 3}, {m - 1, 0}, {0, n - 1}} {
		i, j := ij[0], ij[1]
		var s, abs float64
		for p := 0; p < k; p++ {
			ai, bi := i*lda+p, p*ldb+j
			if tA != blas.NoTrans {
				ai = p*lda + i
			}
			if tB != blas.NoTrans {
				bi = j*ldb + p
			}
			av, bv := a[ai], b[bi]
			s += float64(av) * float64(bv)
			abs += math.Abs(float64(av) * float64(bv))
		}
		s += float64(c0[i*ldc+j])
		abs += math.Abs(float64(c0[i*ldc+j]))
		if d := math.Abs(float64(got[i*ldc+j]) - s); d > 4*float64(k+2)*eps*abs {
			t.Fatalf("tA=%c tB=%c %dx%dx%d: C[%d,%d] = %g, want %g", tA, tB, m, n, k, i, j, got[i*ldc+j], s)
		}
	}
}

func TestAlphaBetaSemantics(t *testing.T) {
	if !hasKernel {
		t.Skip("no AVX2/FMA kernel on this CPU")
	}
	r := rand.New(rand.NewPCG(4, 4))
	const m, n, k = 13, 35, 300
	for _, alpha := range []float32{0, 1, -1, 0.25} {
		for _, beta := range []float32{0, 1, -1, 3} {
			a, lda, b, ldb, c, ldc := operands(r, blas.NoTrans, blas.Trans, m, n, k, 2)
			c0 := append([]float32(nil), c...)
			if beta == 0 {
				// BLAS: with beta = 0, C is not read, so NaN and Inf in it vanish.
				c[0], c[ldc+1] = float32(math.NaN()), float32(math.Inf(1))
			}
			Implementation{}.Sgemm(blas.NoTrans, blas.Trans, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
			for i := 0; i < m; i++ {
				for j := n; j < ldc; j++ {
					c0[i*ldc+j] = c[i*ldc+j] // padding: compared by checkClose
				}
			}
			checkClose(t, "alpha/beta", blas.NoTrans, blas.Trans, m, n, k, alpha, a, lda, b, ldb, beta, c0, c, ldc)
		}
	}
}

// TestOverwriteEqualsAddingToZeros checks what the model's gradient
// scratch relies on: a product written with beta = 0 has the same bits as
// the product added (beta = 1) to a C of +0s, even where every term is a
// signed zero (rows of -0 in A), with both kernels and gonum's.
func TestOverwriteEqualsAddingToZeros(t *testing.T) {
	r := rand.New(rand.NewPCG(6, 6))
	dims := []int{1, 7, 16, 33, 97, 300, 600}
	negZero := float32(math.Copysign(0, -1))
	for trial := 0; trial < 60; trial++ {
		m, n, k := dims[r.IntN(len(dims))], dims[r.IntN(len(dims))], dims[r.IntN(len(dims))]
		tA, tB := transposes[r.IntN(2)], transposes[r.IntN(2)]
		a, lda, b, ldb, c, ldc := operands(r, tA, tB, m, n, k, r.IntN(3))
		// Row 0 of op(A) all -0 and column 0 of op(B) positive: every
		// term of C[0,0] is -0, which a sum started from its first term
		// instead of from +0 would keep.
		for p := 0; p < k; p++ {
			if tA == blas.NoTrans {
				a[p] = negZero
			} else {
				a[p*lda] = negZero
			}
			if tB == blas.NoTrans {
				b[p*ldb] = float32(math.Abs(float64(b[p*ldb])))
			} else {
				b[p] = float32(math.Abs(float64(b[p])))
			}
		}
		for _, im := range []Implementation{{}, {narrow: true}, {PureGo: true}} {
			over := append([]float32(nil), c...)
			zeros := append([]float32(nil), c...)
			for i := 0; i < m; i++ {
				for j := 0; j < n; j++ {
					over[i*ldc+j] = float32(math.NaN())
					zeros[i*ldc+j] = 0
				}
			}
			im.Sgemm(tA, tB, m, n, k, 1, a, lda, b, ldb, 0, over, ldc)
			im.Sgemm(tA, tB, m, n, k, 1, a, lda, b, ldb, 1, zeros, ldc)
			for i := range over {
				if math.Float32bits(over[i]) != math.Float32bits(zeros[i]) {
					t.Fatalf("%+v tA=%c tB=%c m=%d n=%d k=%d: element %d is %g (bits %#x) overwritten, %g (bits %#x) added to zeros",
						im, tA, tB, m, n, k, i, over[i], math.Float32bits(over[i]), zeros[i], math.Float32bits(zeros[i]))
				}
			}
		}
	}
}

func TestZeroSizedDims(t *testing.T) {
	for _, s := range [][3]int{{0, 5, 3}, {5, 0, 3}, {5, 3, 0}, {0, 0, 0}} {
		m, n, k := s[0], s[1], s[2]
		for _, beta := range []float32{0, 2} {
			c := []float32{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}
			want := append([]float32(nil), c...)
			a, b := make([]float32, 20), make([]float32, 20)
			gonum.Implementation{}.Sgemm(blas.NoTrans, blas.NoTrans, m, n, k, 1, a, max(k, 1), b, max(n, 1), beta, want, max(n, 1))
			Implementation{}.Sgemm(blas.NoTrans, blas.NoTrans, m, n, k, 1, a, max(k, 1), b, max(n, 1), beta, c, max(n, 1))
			for i := range c {
				if c[i] != want[i] {
					t.Fatalf("%dx%dx%d beta=%g: C[%d] = %g, gonum %g", m, n, k, beta, i, c[i], want[i])
				}
			}
		}
	}
}

func TestBadArgumentsPanicLikeGonum(t *testing.T) {
	a := make([]float32, 12)
	cases := []struct {
		name          string
		tA            blas.Transpose
		m, n, k, lda  int
		a, b, c       []float32
		ldb, ldc      int
		wantSubstring string
	}{
		{"negative m", blas.NoTrans, -1, 3, 4, 4, a, a, a, 3, 3, "m < 0"},
		{"short lda", blas.NoTrans, 3, 3, 4, 2, a, a, a, 3, 3, "leading dimension of A"},
		{"short A", blas.NoTrans, 3, 3, 4, 4, a[:5], a, a, 3, 3, "A"},
		{"short C", blas.NoTrans, 3, 3, 4, 4, a, a, a[:4], 3, 3, "C"},
		{"bad transpose", 'x', 3, 3, 4, 4, a, a, a, 3, 3, "transpose"},
	}
	for _, tc := range cases {
		msg := func() (msg string) {
			defer func() { msg = fmt.Sprint(recover()) }()
			Implementation{}.Sgemm(tc.tA, blas.NoTrans, tc.m, tc.n, tc.k, 1, tc.a, tc.lda, tc.b, tc.ldb, 0, tc.c, tc.ldc)
			return ""
		}()
		if !strings.Contains(strings.ToLower(msg), strings.ToLower(tc.wantSubstring)) {
			t.Errorf("%s: panic %q, want one mentioning %q", tc.name, msg, tc.wantSubstring)
		}
	}
}

func TestPureGoIsGonumBitForBit(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 5))
	const m, n, k = 67, 45, 129
	a, lda, b, ldb, c, ldc := operands(r, blas.Trans, blas.NoTrans, m, n, k, 0)
	want := append([]float32(nil), c...)
	gonum.Implementation{}.Sgemm(blas.Trans, blas.NoTrans, m, n, k, 1, a, lda, b, ldb, 1, want, ldc)
	Implementation{PureGo: true}.Sgemm(blas.Trans, blas.NoTrans, m, n, k, 1, a, lda, b, ldb, 1, c, ldc)
	for i := range c {
		if math.Float32bits(c[i]) != math.Float32bits(want[i]) {
			t.Fatalf("C[%d] = %g, gonum %g", i, c[i], want[i])
		}
	}
}

// TestEnvForcesGonum runs this test binary again with STAGECOACH_GEMM set
// and checks what the child reports.
func TestEnvForcesGonum(t *testing.T) {
	if os.Getenv("SGEMM_TEST_CHILD") != "" {
		fmt.Printf("kernel=%s err=%v\n", Kernel(), CheckEnv())
		return
	}
	avx2 := "kernel=gonum err=<nil>" // no assembly kernel: gonum either way
	if hasKernel {
		avx2 = "kernel=avx2-fma err=<nil>"
	}
	for _, tc := range []struct{ env, want string }{
		{"go", "kernel=gonum err=<nil>"},
		{"avx2", avx2},
		{"bogus", `STAGECOACH_GEMM="bogus"`},
	} {
		cmd := exec.Command(os.Args[0], "-test.run", "^TestEnvForcesGonum$")
		cmd.Env = append(os.Environ(), "SGEMM_TEST_CHILD=1", EnvVar+"="+tc.env)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("child: %v\n%s", err, out)
		}
		if !strings.Contains(string(out), tc.want) {
			t.Errorf("%s=%s: child printed %q, want %q", EnvVar, tc.env, out, tc.want)
		}
	}
	want := "gonum"
	switch {
	case hasWide:
		want = "avx512"
	case hasKernel:
		want = "avx2-fma"
	}
	if os.Getenv(EnvVar) == "" && Kernel() != want {
		t.Errorf("Kernel() = %q, want %q (AVX2+FMA %v, AVX-512 %v)", Kernel(), want, hasKernel, hasWide)
	}
}

// TestWideKernelMatchesAVX2BitForBit multiplies random shapes (odd sizes,
// every transpose, panels read in place and packed, k over several slabs)
// with the AVX-512 kernel and with the AVX2 one: the bits must match, so
// that the kernel a CPU picks never changes a loss.
func TestWideKernelMatchesAVX2BitForBit(t *testing.T) {
	if !hasWide || !useWide {
		t.Skipf("the AVX-512 kernel is not in use here (AVX-512F %v, %s=%q)", hasWide, EnvVar, os.Getenv(EnvVar))
	}
	r := rand.New(rand.NewPCG(5, 5))
	dims := []int{1, 5, 6, 7, 16, 17, 31, 32, 33, 48, 95, 96, 97, 130, 257, 300, 600}
	wides := 0
	for trial := 0; trial < 150; trial++ {
		m, n, k := dims[r.IntN(len(dims))], dims[r.IntN(len(dims))], dims[r.IntN(len(dims))]
		tA, tB := transposes[r.IntN(2)], transposes[r.IntN(2)]
		alpha := []float32{1, -0.5, 2.5}[r.IntN(3)]
		beta := []float32{0, 1, 0.5}[r.IntN(3)]
		a, lda, b, ldb, c0, ldc := operands(r, tA, tB, m, n, k, r.IntN(3))
		wide, narrow := append([]float32(nil), c0...), append([]float32(nil), c0...)
		Implementation{Threads: 2}.Sgemm(tA, tB, m, n, k, alpha, a, lda, b, ldb, beta, wide, ldc)
		Implementation{Threads: 2, narrow: true}.Sgemm(tA, tB, m, n, k, alpha, a, lda, b, ldb, beta, narrow, ldc)
		for i := range wide {
			if math.Float32bits(wide[i]) != math.Float32bits(narrow[i]) {
				t.Fatalf("tA=%c tB=%c m=%d n=%d k=%d alpha=%g beta=%g: element %d is %g with AVX-512, %g with AVX2", tA, tB, m, n, k, alpha, beta, i, wide[i], narrow[i])
			}
		}
		if m >= mr && n >= 2*nr {
			wides++
		}
	}
	if wides < 30 {
		t.Fatalf("only %d products had two full panels side by side", wides)
	}
}

func FuzzShapes(f *testing.F) {
	f.Add(uint8(7), uint8(17), uint8(5), uint8(0), uint8(1))
	f.Add(uint8(96), uint8(16), uint8(255), uint8(3), uint8(0))
	f.Fuzz(func(t *testing.T, m8, n8, k8, trans, pad uint8) {
		m, n, k := int(m8), int(n8), int(k8)+int(m8)%3*200
		tA, tB := transposes[trans&1], transposes[trans>>1&1]
		r := rand.New(rand.NewPCG(uint64(m), uint64(n*1000+k)))
		a, lda, b, ldb, c, ldc := operands(r, tA, tB, m, n, k, int(pad%4))
		c0 := append([]float32(nil), c...)
		Implementation{Threads: 3}.Sgemm(tA, tB, m, n, k, 1.5, a, lda, b, ldb, 0.5, c, ldc)
		checkClose(t, "fuzz", tA, tB, m, n, k, 1.5, a, lda, b, ldb, 0.5, c0, c, ldc)
	})
}

// TestPoolBytes checks the bound by hand: the default model's widest
// product has 512 columns (its MLP), a slab of 256 × 512 floats (512 KiB),
// and on 2 goroutines four such buffers; a narrow product's largest
// buffer is a block of A, 96 × 256 floats.
func TestPoolBytes(t *testing.T) {
	if !useKernel {
		if got := PoolBytes(512, 2); got != 0 {
			t.Fatalf("PoolBytes without the kernel = %d, want 0", got)
		}
		t.Skip("no AVX2 kernel: gonum computes the products and the pool is unused")
	}
	for _, c := range []struct {
		n, threads int
		want       int64
	}{
		{512, 2, 4 * 512 << 10},
		{500, 1, 2 * 512 << 10},   // 500 rounds up to 512 columns
		{8192, 2, 4 * 4 << 20},    // capped at ncBlock: 256 × 4096 floats
		{16, 2, 4 * 96 * 256 * 4}, // the A block is the larger buffer
		{512, 0, 2 * 512 << 10},   // at least one goroutine
		{0, 2, 0},
	} {
		if got := PoolBytes(c.n, c.threads); got != c.want {
			t.Errorf("PoolBytes(%d, %d) = %d, want %d", c.n, c.threads, got, c.want)
		}
	}
}
