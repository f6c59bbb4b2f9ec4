//go:build amd64 && !purego

#include "textflag.h"

// Constants of the Cephes expf, as float32 bit patterns.
DATA expc<>+0(SB)/4, $0x42b00000  // 88 (e^88 < 2^127: finite)
DATA expc<>+4(SB)/4, $0xc2ae999a  // -87.3
DATA expc<>+8(SB)/4, $0x3fb8aa3b  // log2(e)
DATA expc<>+12(SB)/4, $0x3f318000 // ln2 high 0.693359375
DATA expc<>+16(SB)/4, $0xb95e8083 // ln2 low -2.12194440e-4
DATA expc<>+20(SB)/4, $0x39506967 // p0 1.9875691500e-4
DATA expc<>+24(SB)/4, $0x3ab743ce // p1 1.3981999507e-3
DATA expc<>+28(SB)/4, $0x3c088908 // p2 8.3334519073e-3
DATA expc<>+32(SB)/4, $0x3d2aa9c1 // p3 4.1665795894e-2
DATA expc<>+36(SB)/4, $0x3e2aaaaa // p4 1.6666665459e-1
DATA expc<>+40(SB)/4, $0x3f000000 // p5 5.0000001201e-1
DATA expc<>+44(SB)/4, $0x3f800000 // 1
DATA expc<>+48(SB)/4, $0x0000007f // 127
GLOBL expc<>(SB), RODATA|NOPTR, $52

// EXPF sets Y3 = e^X, eight lanes, clamped as expSubAVX2 documents. X is
// clobbered (it ends as the reduced argument r), N holds n and S is
// scratch; Y4-Y6 are scratch too, and Y8-Y14 must hold the constants
// expSubAVX2 loads. The gelu kernels below compute their exponential with
// it, so every e^x of the package is the same instruction sequence.
#define EXPF(X, N, S) \
	VMINPS  Y14, X, X; \
	VMAXPS  Y13, X, X; \
	VMULPS  Y12, X, N; \
	VROUNDPS $0, N, N; \
	VMULPS  Y11, N, S; \
	VSUBPS  S, X, X; \
	VMULPS  Y10, N, S; \
	VSUBPS  S, X, X; \
	VBROADCASTSS expc<>+20(SB), Y3; \
	VBROADCASTSS expc<>+24(SB), Y4; \
	VFMADD213PS Y4, X, Y3; \
	VBROADCASTSS expc<>+28(SB), Y4; \
	VFMADD213PS Y4, X, Y3; \
	VBROADCASTSS expc<>+32(SB), Y4; \
	VFMADD213PS Y4, X, Y3; \
	VBROADCASTSS expc<>+36(SB), Y4; \
	VFMADD213PS Y4, X, Y3; \
	VBROADCASTSS expc<>+40(SB), Y4; \
	VFMADD213PS Y4, X, Y3; \
	VMULPS  X, X, Y5; \
	VADDPS  Y9, X, Y6; \
	VFMADD213PS Y6, Y5, Y3; \
	VCVTPS2DQ N, N; \
	VPADDD  Y8, N, N; \
	VPSLLD  $23, N, N; \
	VMULPS  N, Y3, Y3

// func expSubAVX2(x *float32, n int, sub float32)
TEXT ·expSubAVX2(SB), NOSPLIT, $0-20
	MOVQ x+0(FP), SI
	MOVQ n+8(FP), CX
	VBROADCASTSS sub+16(FP), Y15
	VBROADCASTSS expc<>+0(SB), Y14  // hi
	VBROADCASTSS expc<>+4(SB), Y13  // lo
	VBROADCASTSS expc<>+8(SB), Y12  // log2e
	VBROADCASTSS expc<>+12(SB), Y11 // ln2 hi
	VBROADCASTSS expc<>+16(SB), Y10 // ln2 lo
	VBROADCASTSS expc<>+44(SB), Y9  // 1
	VPBROADCASTD expc<>+48(SB), Y8  // 127
	SHRQ $3, CX

loop:
	VMOVUPS (SI), Y0
	VSUBPS  Y15, Y0, Y0     // x - sub
	EXPF(Y0, Y1, Y2)
	VMOVUPS Y3, (SI)
	ADDQ    $32, SI
	DECQ    CX
	JNZ     loop
	VZEROUPPER
	RET

// Constants of the tanh-approximated GELU, as float32 bit patterns: the
// values the Go code in gelu.go rounds its constants to, so the two agree
// bit for bit (no FMA outside the exponential, same operation order).
DATA gelc<>+0(SB)/4, $0x3d372713  // 0.044715
DATA gelc<>+4(SB)/4, $0x3fcc422a  // 2·sqrt(2/π)
DATA gelc<>+8(SB)/4, $0x40000000  // 2
DATA gelc<>+12(SB)/4, $0x3f000000 // 0.5
DATA gelc<>+16(SB)/4, $0x3f4c422a // sqrt(2/π)
DATA gelc<>+20(SB)/4, $0x3e095d4f // 3·0.044715
GLOBL gelc<>(SB), RODATA|NOPTR, $24

// func geluForwardAVX2(u, a, th *float32, n int)
TEXT ·geluForwardAVX2(SB), NOSPLIT, $0-32
	MOVQ u+0(FP), SI
	MOVQ a+8(FP), DI
	MOVQ th+16(FP), DX
	MOVQ n+24(FP), CX
	VBROADCASTSS expc<>+0(SB), Y14  // hi
	VBROADCASTSS expc<>+4(SB), Y13  // lo
	VBROADCASTSS expc<>+8(SB), Y12  // log2e
	VBROADCASTSS expc<>+12(SB), Y11 // ln2 hi
	VBROADCASTSS expc<>+16(SB), Y10 // ln2 lo
	VBROADCASTSS expc<>+44(SB), Y9  // 1
	VPBROADCASTD expc<>+48(SB), Y8  // 127
	VBROADCASTSS gelc<>+0(SB), Y15  // 0.044715
	VBROADCASTSS gelc<>+4(SB), Y7   // 2c
	SHRQ $3, CX

gfloop:
	VMOVUPS (SI), Y0        // x
	VMULPS  Y0, Y15, Y1     // 0.044715·x
	VMULPS  Y0, Y1, Y1      // ·x
	VMULPS  Y0, Y1, Y1      // ·x
	VADDPS  Y1, Y0, Y1      // x + 0.044715·x³
	VMULPS  Y1, Y7, Y1      // y = 2c·(…)
	EXPF(Y1, Y2, Y3)        // e = e^y
	// t = 1 − 2/(e + 1)
	VADDPS  Y9, Y3, Y3
	VBROADCASTSS gelc<>+8(SB), Y4
	VDIVPS  Y3, Y4, Y4
	VSUBPS  Y4, Y9, Y4
	VMOVUPS Y4, (DX)
	// a = (0.5·x)·(1 + t)
	VBROADCASTSS gelc<>+12(SB), Y5
	VMULPS  Y0, Y5, Y5
	VADDPS  Y9, Y4, Y6
	VMULPS  Y6, Y5, Y5
	VMOVUPS Y5, (DI)
	ADDQ    $32, SI
	ADDQ    $32, DI
	ADDQ    $32, DX
	DECQ    CX
	JNZ     gfloop
	VZEROUPPER
	RET

// func geluBackwardAVX2(u, th, da *float32, n int)
TEXT ·geluBackwardAVX2(SB), NOSPLIT, $0-32
	MOVQ u+0(FP), SI
	MOVQ th+8(FP), DX
	MOVQ da+16(FP), DI
	MOVQ n+24(FP), CX
	VBROADCASTSS expc<>+44(SB), Y9  // 1
	VBROADCASTSS gelc<>+12(SB), Y10 // 0.5
	VBROADCASTSS gelc<>+16(SB), Y11 // c
	VBROADCASTSS gelc<>+20(SB), Y12 // 3·0.044715
	SHRQ $3, CX

gbloop:
	VMOVUPS (SI), Y0        // x
	VMOVUPS (DX), Y1        // t
	VADDPS  Y1, Y9, Y2      // 1 + t
	VMULPS  Y2, Y10, Y2     // A = 0.5·(1 + t)
	VMULPS  Y0, Y10, Y3     // 0.5·x
	VMULPS  Y1, Y1, Y4      // t·t
	VSUBPS  Y4, Y9, Y4      // 1 − t·t
	VMULPS  Y4, Y3, Y3
	VMULPS  Y11, Y3, Y3     // ·c
	VMULPS  Y0, Y12, Y5     // 3·0.044715·x
	VMULPS  Y0, Y5, Y5      // ·x
	VADDPS  Y5, Y9, Y5      // 1 + …
	VMULPS  Y5, Y3, Y3      // B
	VADDPS  Y3, Y2, Y2      // d = A + B
	VMOVUPS (DI), Y6
	VMULPS  Y2, Y6, Y6
	VMOVUPS Y6, (DI)
	ADDQ    $32, SI
	ADDQ    $32, DX
	ADDQ    $32, DI
	DECQ    CX
	JNZ     gbloop
	VZEROUPPER
	RET

// EXPF512 is EXPF on sixteen lanes: Z3 = e^X with the same operations in
// the same order per lane (VRNDSCALEPS $0 rounds to nearest even as
// VROUNDPS $0 does), so the two give the same bits. Z4-Z6 are scratch and
// Z8-Z14 must hold the constants, as Y8-Y14 for EXPF.
#define EXPF512(X, N, S) \
	VMINPS  Z14, X, X; \
	VMAXPS  Z13, X, X; \
	VMULPS  Z12, X, N; \
	VRNDSCALEPS $0, N, N; \
	VMULPS  Z11, N, S; \
	VSUBPS  S, X, X; \
	VMULPS  Z10, N, S; \
	VSUBPS  S, X, X; \
	VBROADCASTSS expc<>+20(SB), Z3; \
	VBROADCASTSS expc<>+24(SB), Z4; \
	VFMADD213PS Z4, X, Z3; \
	VBROADCASTSS expc<>+28(SB), Z4; \
	VFMADD213PS Z4, X, Z3; \
	VBROADCASTSS expc<>+32(SB), Z4; \
	VFMADD213PS Z4, X, Z3; \
	VBROADCASTSS expc<>+36(SB), Z4; \
	VFMADD213PS Z4, X, Z3; \
	VBROADCASTSS expc<>+40(SB), Z4; \
	VFMADD213PS Z4, X, Z3; \
	VMULPS  X, X, Z5; \
	VADDPS  Z9, X, Z6; \
	VFMADD213PS Z6, Z5, Z3; \
	VCVTPS2DQ N, N; \
	VPADDD  Z8, N, N; \
	VPSLLD  $23, N, N; \
	VMULPS  N, Z3, Z3

// func geluForwardAVX512(u, a, th *float32, n int)
TEXT ·geluForwardAVX512(SB), NOSPLIT, $0-32
	MOVQ u+0(FP), SI
	MOVQ a+8(FP), DI
	MOVQ th+16(FP), DX
	MOVQ n+24(FP), CX
	VBROADCASTSS expc<>+0(SB), Z14  // hi
	VBROADCASTSS expc<>+4(SB), Z13  // lo
	VBROADCASTSS expc<>+8(SB), Z12  // log2e
	VBROADCASTSS expc<>+12(SB), Z11 // ln2 hi
	VBROADCASTSS expc<>+16(SB), Z10 // ln2 lo
	VBROADCASTSS expc<>+44(SB), Z9  // 1
	VPBROADCASTD expc<>+48(SB), Z8  // 127
	VBROADCASTSS gelc<>+0(SB), Z15  // 0.044715
	VBROADCASTSS gelc<>+4(SB), Z7   // 2c
	VBROADCASTSS gelc<>+8(SB), Z16  // 2
	VBROADCASTSS gelc<>+12(SB), Z17 // 0.5
	SHRQ $4, CX

gf512loop:
	VMOVUPS (SI), Z0        // x
	VMULPS  Z0, Z15, Z1     // 0.044715·x
	VMULPS  Z0, Z1, Z1      // ·x
	VMULPS  Z0, Z1, Z1      // ·x
	VADDPS  Z1, Z0, Z1      // x + 0.044715·x³
	VMULPS  Z1, Z7, Z1      // y = 2c·(…)
	EXPF512(Z1, Z2, Z3)     // e = e^y
	// t = 1 − 2/(e + 1)
	VADDPS  Z9, Z3, Z3
	VDIVPS  Z3, Z16, Z4
	VSUBPS  Z4, Z9, Z4
	VMOVUPS Z4, (DX)
	// a = (0.5·x)·(1 + t)
	VMULPS  Z0, Z17, Z5
	VADDPS  Z9, Z4, Z6
	VMULPS  Z6, Z5, Z5
	VMOVUPS Z5, (DI)
	ADDQ    $64, SI
	ADDQ    $64, DI
	ADDQ    $64, DX
	DECQ    CX
	JNZ     gf512loop
	VZEROUPPER
	RET

// func geluBackwardAVX512(u, th, da *float32, n int)
TEXT ·geluBackwardAVX512(SB), NOSPLIT, $0-32
	MOVQ u+0(FP), SI
	MOVQ th+8(FP), DX
	MOVQ da+16(FP), DI
	MOVQ n+24(FP), CX
	VBROADCASTSS expc<>+44(SB), Z9  // 1
	VBROADCASTSS gelc<>+12(SB), Z10 // 0.5
	VBROADCASTSS gelc<>+16(SB), Z11 // c
	VBROADCASTSS gelc<>+20(SB), Z12 // 3·0.044715
	SHRQ $4, CX

gb512loop:
	VMOVUPS (SI), Z0        // x
	VMOVUPS (DX), Z1        // t
	VADDPS  Z1, Z9, Z2      // 1 + t
	VMULPS  Z2, Z10, Z2     // A = 0.5·(1 + t)
	VMULPS  Z0, Z10, Z3     // 0.5·x
	VMULPS  Z1, Z1, Z4      // t·t
	VSUBPS  Z4, Z9, Z4      // 1 − t·t
	VMULPS  Z4, Z3, Z3
	VMULPS  Z11, Z3, Z3     // ·c
	VMULPS  Z0, Z12, Z5     // 3·0.044715·x
	VMULPS  Z0, Z5, Z5      // ·x
	VADDPS  Z5, Z9, Z5      // 1 + …
	VMULPS  Z5, Z3, Z3      // B
	VADDPS  Z3, Z2, Z2      // d = A + B
	VMOVUPS (DI), Z6
	VMULPS  Z2, Z6, Z6
	VMOVUPS Z6, (DI)
	ADDQ    $64, SI
	ADDQ    $64, DX
	ADDQ    $64, DI
	DECQ    CX
	JNZ     gb512loop
	VZEROUPPER
	RET
