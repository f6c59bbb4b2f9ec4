//go:build amd64 && !purego

#include "textflag.h"

// The element-wise kernels of elem.go, eight lanes a step; n is a positive
// multiple of 8. Each performs its scalar form's operations in the same
// order, without FMA.

// func addAVX2(dst, src *float32, n int)
TEXT ·addAVX2(SB), NOSPLIT, $0-24
	MOVQ dst+0(FP), DI
	MOVQ src+8(FP), SI
	MOVQ n+16(FP), CX
	SHRQ $3, CX

addloop:
	VMOVUPS (DI), Y0
	VADDPS  (SI), Y0, Y0
	VMOVUPS Y0, (DI)
	ADDQ    $32, DI
	ADDQ    $32, SI
	DECQ    CX
	JNZ     addloop
	VZEROUPPER
	RET

// func scaleAVX2(x *float32, n int, s float32)
TEXT ·scaleAVX2(SB), NOSPLIT, $0-20
	MOVQ x+0(FP), DI
	MOVQ n+8(FP), CX
	VBROADCASTSS s+16(FP), Y1
	SHRQ $3, CX

scaleloop:
	VMULPS  (DI), Y1, Y0
	VMOVUPS Y0, (DI)
	ADDQ    $32, DI
	DECQ    CX
	JNZ     scaleloop
	VZEROUPPER
	RET

// func scaleMulAVX2(out, x, gain *float32, n int, r float32)
TEXT ·scaleMulAVX2(SB), NOSPLIT, $0-36
	MOVQ out+0(FP), DI
	MOVQ x+8(FP), SI
	MOVQ gain+16(FP), DX
	MOVQ n+24(FP), CX
	VBROADCASTSS r+32(FP), Y1
	SHRQ $3, CX

smloop:
	VMULPS  (SI), Y1, Y0    // x·r
	VMULPS  (DX), Y0, Y0    // ·g
	VMOVUPS Y0, (DI)
	ADDQ    $32, DI
	ADDQ    $32, SI
	ADDQ    $32, DX
	DECQ    CX
	JNZ     smloop
	VZEROUPPER
	RET

// func addScaledProductAVX2(acc, a, b *float32, n int, r float32)
TEXT ·addScaledProductAVX2(SB), NOSPLIT, $0-36
	MOVQ acc+0(FP), DI
	MOVQ a+8(FP), SI
	MOVQ b+16(FP), DX
	MOVQ n+24(FP), CX
	VBROADCASTSS r+32(FP), Y1
	SHRQ $3, CX

asploop:
	VMOVUPS (SI), Y0
	VMULPS  (DX), Y0, Y0    // a·b
	VMULPS  Y1, Y0, Y0      // ·r
	VADDPS  (DI), Y0, Y0    // acc +
	VMOVUPS Y0, (DI)
	ADDQ    $32, DI
	ADDQ    $32, SI
	ADDQ    $32, DX
	DECQ    CX
	JNZ     asploop
	VZEROUPPER
	RET

// func rmsInputGradAVX2(dx, res, x, gain, dy *float32, n int, r, c float32)
TEXT ·rmsInputGradAVX2(SB), NOSPLIT, $0-56
	MOVQ dx+0(FP), DI
	MOVQ res+8(FP), R8
	MOVQ x+16(FP), SI
	MOVQ gain+24(FP), DX
	MOVQ dy+32(FP), BX
	MOVQ n+40(FP), CX
	VBROADCASTSS r+48(FP), Y1
	VBROADCASTSS c+52(FP), Y2
	SHRQ $3, CX

rigloop:
	VMULPS  (DX), Y1, Y0    // r·g
	VMULPS  (BX), Y0, Y0    // ·dy
	VMULPS  (SI), Y2, Y3    // c·x
	VSUBPS  Y3, Y0, Y0      // r·g·dy − c·x
	VADDPS  (R8), Y0, Y0    // res +
	VMOVUPS Y0, (DI)
	ADDQ    $32, DI
	ADDQ    $32, R8
	ADDQ    $32, SI
	ADDQ    $32, DX
	ADDQ    $32, BX
	DECQ    CX
	JNZ     rigloop
	VZEROUPPER
	RET

// func softmaxGradAVX2(p, d *float32, n int, dot, scale float32)
TEXT ·softmaxGradAVX2(SB), NOSPLIT, $0-32
	MOVQ p+0(FP), SI
	MOVQ d+8(FP), DI
	MOVQ n+16(FP), CX
	VBROADCASTSS dot+24(FP), Y1
	VBROADCASTSS scale+28(FP), Y2
	SHRQ $3, CX

sgloop:
	VMOVUPS (DI), Y0
	VSUBPS  Y1, Y0, Y0      // d − dot
	VMULPS  (SI), Y0, Y0    // p·
	VMULPS  Y2, Y0, Y0      // ·scale
	VMOVUPS Y0, (DI)
	ADDQ    $32, SI
	ADDQ    $32, DI
	DECQ    CX
	JNZ     sgloop
	VZEROUPPER
	RET

// The max kernels keep, in each lane, x > max ? x : max (VMAXPS returns
// its second source on a NaN or a tie), as the scalar loop does; the
// lanes' maxima are then combined in any order, which gives the same
// largest value. MAXINIT sets Y2 to -Inf in every lane; MAXREDUCE leaves
// the largest of Y2's lanes in X2's first.
#define MAXINIT \
	MOVL         $0xff800000, AX \
	VMOVD        AX, X2          \
	VBROADCASTSS X2, Y2

#define MAXREDUCE \
	VEXTRACTF128 $1, Y2, X3 \
	VMAXPS       X2, X3, X2 \
	VPSHUFD      $0x4e, X2, X3 \
	VMAXPS       X2, X3, X2 \
	VPSHUFD      $0xb1, X2, X3 \
	VMAXPS       X2, X3, X2

// func scaleMaxAVX2(x *float32, n int, s float32) float32
TEXT ·scaleMaxAVX2(SB), NOSPLIT, $0-28
	MOVQ         x+0(FP), DI
	MOVQ         n+8(FP), CX
	VBROADCASTSS s+16(FP), Y1
	MAXINIT
	SHRQ         $3, CX

scalemaxloop:
	VMULPS  (DI), Y1, Y0
	VMOVUPS Y0, (DI)
	VMAXPS  Y2, Y0, Y2
	ADDQ    $32, DI
	DECQ    CX
	JNZ     scalemaxloop
	MAXREDUCE
	VMOVSS  X2, ret+24(FP)
	VZEROUPPER
	RET

// func maxAVX2(x *float32, n int) float32
TEXT ·maxAVX2(SB), NOSPLIT, $0-20
	MOVQ x+0(FP), DI
	MOVQ n+8(FP), CX
	MAXINIT
	SHRQ $3, CX

maxloop:
	VMOVUPS (DI), Y0
	VMAXPS  Y2, Y0, Y2
	ADDQ    $32, DI
	DECQ    CX
	JNZ     maxloop
	MAXREDUCE
	VMOVSS  X2, ret+16(FP)
	VZEROUPPER
	RET
