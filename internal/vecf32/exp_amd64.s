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
	VMINPS  Y14, Y0, Y0
	VMAXPS  Y13, Y0, Y0
	VMULPS  Y12, Y0, Y1
	VROUNDPS $0, Y1, Y1     // n = round(x·log2e), to nearest even
	VMULPS  Y11, Y1, Y2
	VSUBPS  Y2, Y0, Y0      // r = x − n·ln2hi
	VMULPS  Y10, Y1, Y2
	VSUBPS  Y2, Y0, Y0      // r −= n·ln2lo
	VBROADCASTSS expc<>+20(SB), Y3
	VBROADCASTSS expc<>+24(SB), Y4
	VFMADD213PS Y4, Y0, Y3  // y = y·r + p1
	VBROADCASTSS expc<>+28(SB), Y4
	VFMADD213PS Y4, Y0, Y3
	VBROADCASTSS expc<>+32(SB), Y4
	VFMADD213PS Y4, Y0, Y3
	VBROADCASTSS expc<>+36(SB), Y4
	VFMADD213PS Y4, Y0, Y3
	VBROADCASTSS expc<>+40(SB), Y4
	VFMADD213PS Y4, Y0, Y3
	VMULPS  Y0, Y0, Y5      // r²
	VADDPS  Y9, Y0, Y6      // r + 1
	VFMADD213PS Y6, Y5, Y3  // y = y·r² + (r + 1)
	VCVTPS2DQ Y1, Y1
	VPADDD  Y8, Y1, Y1
	VPSLLD  $23, Y1, Y1     // 2^n
	VMULPS  Y1, Y3, Y3
	VMOVUPS Y3, (SI)
	ADDQ    $32, SI
	DECQ    CX
	JNZ     loop
	VZEROUPPER
	RET
