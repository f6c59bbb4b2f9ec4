//go:build amd64 && !purego

#include "textflag.h"

// The AdamW/LAMB element loops of model.Optimizer, four elements at a
// time in float64, with the same operations in the same order as the Go
// code in adam.go (no FMA), so both give the same bits.

// func adamMomentsAVX2(grad, m, v *float32, n int, b1, c1, b2, c2 float64)
TEXT ·adamMomentsAVX2(SB), NOSPLIT, $0-64
	MOVQ grad+0(FP), SI
	MOVQ m+8(FP), DI
	MOVQ v+16(FP), DX
	MOVQ n+24(FP), CX
	VBROADCASTSD b1+32(FP), Y10
	VBROADCASTSD c1+40(FP), Y11
	VBROADCASTSD b2+48(FP), Y12
	VBROADCASTSD c2+56(FP), Y13
	SHRQ $2, CX

momloop:
	VCVTPS2PD (SI), Y0      // g
	VCVTPS2PD (DI), Y1      // m
	VMULPD  Y10, Y1, Y1     // b1·m
	VMULPD  Y11, Y0, Y2     // c1·g
	VADDPD  Y2, Y1, Y1
	VCVTPD2PSY Y1, X1
	VMOVUPS X1, (DI)
	VCVTPS2PD (DX), Y3      // v
	VMULPD  Y12, Y3, Y3     // b2·v
	VMULPD  Y13, Y0, Y4     // c2·g
	VMULPD  Y0, Y4, Y4      // ·g
	VADDPD  Y4, Y3, Y3
	VCVTPD2PSY Y3, X3
	VMOVUPS X3, (DX)
	ADDQ    $16, SI
	ADDQ    $16, DI
	ADDQ    $16, DX
	DECQ    CX
	JNZ     momloop
	VZEROUPPER
	RET

// func adamApplyAVX2(w, m, v *float32, n int, bc1, bc2, eps, wd, scale float64)
TEXT ·adamApplyAVX2(SB), NOSPLIT, $0-72
	MOVQ w+0(FP), SI
	MOVQ m+8(FP), DI
	MOVQ v+16(FP), DX
	MOVQ n+24(FP), CX
	VBROADCASTSD bc1+32(FP), Y10
	VBROADCASTSD bc2+40(FP), Y11
	VBROADCASTSD eps+48(FP), Y12
	VBROADCASTSD wd+56(FP), Y13
	VBROADCASTSD scale+64(FP), Y14
	SHRQ $2, CX

applyloop:
	VCVTPS2PD (DI), Y1      // m
	VDIVPD  Y10, Y1, Y1     // m̂ = m/bc1
	VCVTPS2PD (DX), Y2      // v
	VDIVPD  Y11, Y2, Y2     // v̂ = v/bc2
	VSQRTPD Y2, Y2
	VADDPD  Y12, Y2, Y2     // √v̂ + eps
	VDIVPD  Y2, Y1, Y1      // m̂/(√v̂ + eps)
	VCVTPS2PD (SI), Y0      // w
	VMULPD  Y0, Y13, Y3     // wd·w
	VADDPD  Y3, Y1, Y1      // direction
	VMULPD  Y14, Y1, Y1     // scale·direction
	VSUBPD  Y1, Y0, Y0      // w − scale·direction
	VCVTPD2PSY Y0, X0
	VMOVUPS X0, (SI)
	ADDQ    $16, SI
	ADDQ    $16, DI
	ADDQ    $16, DX
	DECQ    CX
	JNZ     applyloop
	VZEROUPPER
	RET
