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
