//go:build amd64 && !purego

#include "textflag.h"

// One step along k: two 8-wide loads of the B row at DI, six broadcasts of
// the A column (rows at SI, SI+rs, SI+2rs, R10 = SI+3rs, R10+rs, R10+2rs;
// R9 = rs in bytes), twelve FMAs into the accumulators Y4..Y15 (row r in
// Y(4+2r), Y(5+2r)); then A advances by ps bytes (R12), B by bs (R13).
#define STEP \
	VMOVUPS (DI), Y0; \
	VMOVUPS 32(DI), Y1; \
	VBROADCASTSS (SI), Y2; \
	VBROADCASTSS (SI)(R9*1), Y3; \
	VFMADD231PS Y0, Y2, Y4; \
	VFMADD231PS Y1, Y2, Y5; \
	VFMADD231PS Y0, Y3, Y6; \
	VFMADD231PS Y1, Y3, Y7; \
	VBROADCASTSS (SI)(R9*2), Y2; \
	VBROADCASTSS (R10), Y3; \
	VFMADD231PS Y0, Y2, Y8; \
	VFMADD231PS Y1, Y2, Y9; \
	VFMADD231PS Y0, Y3, Y10; \
	VFMADD231PS Y1, Y3, Y11; \
	VBROADCASTSS (R10)(R9*1), Y2; \
	VBROADCASTSS (R10)(R9*2), Y3; \
	VFMADD231PS Y0, Y2, Y12; \
	VFMADD231PS Y1, Y2, Y13; \
	VFMADD231PS Y0, Y3, Y14; \
	VFMADD231PS Y1, Y3, Y15; \
	ADDQ R12, SI; \
	ADDQ R12, R10; \
	ADDQ R13, DI

// Row r of the tile: C = alpha·acc + C (load) or alpha·acc.
#define STORELOAD(lo, hi) \
	VMOVUPS (DX), Y1; \
	VFMADD231PS Y0, lo, Y1; \
	VMOVUPS Y1, (DX); \
	VMOVUPS 32(DX), Y2; \
	VFMADD231PS Y0, hi, Y2; \
	VMOVUPS Y2, 32(DX); \
	ADDQ R8, DX

#define STORE(lo, hi) \
	VMULPS Y0, lo, Y1; \
	VMOVUPS Y1, (DX); \
	VMULPS Y0, hi, Y2; \
	VMOVUPS Y2, 32(DX); \
	ADDQ R8, DX

// func kernel6x16(kc int, a *float32, rs, ps int, b *float32, bs int, c *float32, ldc int, alpha float32, load bool)
TEXT ·kernel6x16(SB), NOSPLIT, $0-69
	MOVQ kc+0(FP), CX
	MOVQ a+8(FP), SI
	MOVQ rs+16(FP), R9
	SHLQ $2, R9
	MOVQ ps+24(FP), R12
	SHLQ $2, R12
	MOVQ b+32(FP), DI
	MOVQ bs+40(FP), R13
	SHLQ $2, R13
	MOVQ c+48(FP), DX
	MOVQ ldc+56(FP), R8
	SHLQ $2, R8
	LEAQ (SI)(R9*2), R10
	ADDQ R9, R10

	VXORPS Y4, Y4, Y4
	VXORPS Y5, Y5, Y5
	VXORPS Y6, Y6, Y6
	VXORPS Y7, Y7, Y7
	VXORPS Y8, Y8, Y8
	VXORPS Y9, Y9, Y9
	VXORPS Y10, Y10, Y10
	VXORPS Y11, Y11, Y11
	VXORPS Y12, Y12, Y12
	VXORPS Y13, Y13, Y13
	VXORPS Y14, Y14, Y14
	VXORPS Y15, Y15, Y15

	MOVQ CX, BX
	SHRQ $2, BX
	ANDQ $3, CX
	TESTQ BX, BX
	JZ   tail

loop4:
	STEP
	STEP
	STEP
	STEP
	DECQ BX
	JNZ  loop4

tail:
	TESTQ CX, CX
	JZ    done

loop1:
	STEP
	DECQ CX
	JNZ  loop1

done:
	VBROADCASTSS alpha+64(FP), Y0
	MOVBLZX load+68(FP), AX
	TESTQ AX, AX
	JZ    overwrite
	STORELOAD(Y4, Y5)
	STORELOAD(Y6, Y7)
	STORELOAD(Y8, Y9)
	STORELOAD(Y10, Y11)
	STORELOAD(Y12, Y13)
	STORELOAD(Y14, Y15)
	VZEROUPPER
	RET

overwrite:
	STORE(Y4, Y5)
	STORE(Y6, Y7)
	STORE(Y8, Y9)
	STORE(Y10, Y11)
	STORE(Y12, Y13)
	STORE(Y14, Y15)
	VZEROUPPER
	RET

// The AVX-512 kernel: two 16-column micro-panels of B side by side (b0 at
// DI, b1 at R11, both with row stride bs), one 16-wide load of each per
// k, the same six A broadcasts, twelve FMAs into Z4..Z15 (row r: Z(4+2r)
// for b0's columns, Z(5+2r) for b1's). Each element of C gets the same
// multiply-adds in the same order as from kernel6x16, so the bits match.
#define STEPZ \
	VMOVUPS (DI), Z0; \
	VMOVUPS (R11), Z1; \
	VBROADCASTSS (SI), Z2; \
	VBROADCASTSS (SI)(R9*1), Z3; \
	VFMADD231PS Z0, Z2, Z4; \
	VFMADD231PS Z1, Z2, Z5; \
	VFMADD231PS Z0, Z3, Z6; \
	VFMADD231PS Z1, Z3, Z7; \
	VBROADCASTSS (SI)(R9*2), Z2; \
	VBROADCASTSS (R10), Z3; \
	VFMADD231PS Z0, Z2, Z8; \
	VFMADD231PS Z1, Z2, Z9; \
	VFMADD231PS Z0, Z3, Z10; \
	VFMADD231PS Z1, Z3, Z11; \
	VBROADCASTSS (R10)(R9*1), Z2; \
	VBROADCASTSS (R10)(R9*2), Z3; \
	VFMADD231PS Z0, Z2, Z12; \
	VFMADD231PS Z1, Z2, Z13; \
	VFMADD231PS Z0, Z3, Z14; \
	VFMADD231PS Z1, Z3, Z15; \
	ADDQ R12, SI; \
	ADDQ R12, R10; \
	ADDQ R13, DI; \
	ADDQ R13, R11

#define STORELOADZ(lo, hi) \
	VMOVUPS (DX), Z1; \
	VFMADD231PS Z0, lo, Z1; \
	VMOVUPS Z1, (DX); \
	VMOVUPS 64(DX), Z2; \
	VFMADD231PS Z0, hi, Z2; \
	VMOVUPS Z2, 64(DX); \
	ADDQ R8, DX

#define STOREZ(lo, hi) \
	VMULPS Z0, lo, Z1; \
	VMOVUPS Z1, (DX); \
	VMULPS Z0, hi, Z2; \
	VMOVUPS Z2, 64(DX); \
	ADDQ R8, DX

// func kernel6x32(kc int, a *float32, rs, ps int, b0, b1 *float32, bs int, c *float32, ldc int, alpha float32, load bool)
TEXT ·kernel6x32(SB), NOSPLIT, $0-77
	MOVQ kc+0(FP), CX
	MOVQ a+8(FP), SI
	MOVQ rs+16(FP), R9
	SHLQ $2, R9
	MOVQ ps+24(FP), R12
	SHLQ $2, R12
	MOVQ b0+32(FP), DI
	MOVQ b1+40(FP), R11
	MOVQ bs+48(FP), R13
	SHLQ $2, R13
	MOVQ c+56(FP), DX
	MOVQ ldc+64(FP), R8
	SHLQ $2, R8
	LEAQ (SI)(R9*2), R10
	ADDQ R9, R10

	VPXORD Z4, Z4, Z4
	VPXORD Z5, Z5, Z5
	VPXORD Z6, Z6, Z6
	VPXORD Z7, Z7, Z7
	VPXORD Z8, Z8, Z8
	VPXORD Z9, Z9, Z9
	VPXORD Z10, Z10, Z10
	VPXORD Z11, Z11, Z11
	VPXORD Z12, Z12, Z12
	VPXORD Z13, Z13, Z13
	VPXORD Z14, Z14, Z14
	VPXORD Z15, Z15, Z15

	MOVQ CX, BX
	SHRQ $2, BX
	ANDQ $3, CX
	TESTQ BX, BX
	JZ   tailz

loop4z:
	STEPZ
	STEPZ
	STEPZ
	STEPZ
	DECQ BX
	JNZ  loop4z

tailz:
	TESTQ CX, CX
	JZ    donez

loop1z:
	STEPZ
	DECQ CX
	JNZ  loop1z

donez:
	VBROADCASTSS alpha+72(FP), Z0
	MOVBLZX load+76(FP), AX
	TESTQ AX, AX
	JZ    overwritez
	STORELOADZ(Z4, Z5)
	STORELOADZ(Z6, Z7)
	STORELOADZ(Z8, Z9)
	STORELOADZ(Z10, Z11)
	STORELOADZ(Z12, Z13)
	STORELOADZ(Z14, Z15)
	VZEROUPPER
	RET

overwritez:
	STOREZ(Z4, Z5)
	STOREZ(Z6, Z7)
	STOREZ(Z8, Z9)
	STOREZ(Z10, Z11)
	STOREZ(Z12, Z13)
	STOREZ(Z14, Z15)
	VZEROUPPER
	RET

// func packB16(d *float32, b *float32, ldb, kc int)
// Copies kc rows of 16 floats, row q from b + q·ldb, to d + 16q: packB's
// full untransposed panel without a call per row.
TEXT ·packB16(SB), NOSPLIT, $0-32
	MOVQ d+0(FP), DI
	MOVQ b+8(FP), SI
	MOVQ ldb+16(FP), R8
	SHLQ $2, R8
	MOVQ kc+24(FP), CX
	TESTQ CX, CX
	JZ   packdone

packloop:
	VMOVUPS (SI), Y0
	VMOVUPS 32(SI), Y1
	VMOVUPS Y0, (DI)
	VMOVUPS Y1, 32(DI)
	ADDQ R8, SI
	ADDQ $64, DI
	DECQ CX
	JNZ  packloop

packdone:
	VZEROUPPER
	RET
