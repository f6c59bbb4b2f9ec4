//go:build amd64 && !purego

#include "textflag.h"

// One step along k: two 8-wide loads of the B row, six broadcasts of the A
// column, twelve FMAs into the accumulators Y4..Y15 (row r in Y(4+2r),
// Y(5+2r)). SI walks A (24 bytes a step), DI walks B (64 bytes a step).
#define STEP(ao, bo) \
	VMOVUPS bo(DI), Y0; \
	VMOVUPS bo+32(DI), Y1; \
	VBROADCASTSS ao(SI), Y2; \
	VBROADCASTSS ao+4(SI), Y3; \
	VFMADD231PS Y0, Y2, Y4; \
	VFMADD231PS Y1, Y2, Y5; \
	VFMADD231PS Y0, Y3, Y6; \
	VFMADD231PS Y1, Y3, Y7; \
	VBROADCASTSS ao+8(SI), Y2; \
	VBROADCASTSS ao+12(SI), Y3; \
	VFMADD231PS Y0, Y2, Y8; \
	VFMADD231PS Y1, Y2, Y9; \
	VFMADD231PS Y0, Y3, Y10; \
	VFMADD231PS Y1, Y3, Y11; \
	VBROADCASTSS ao+16(SI), Y2; \
	VBROADCASTSS ao+20(SI), Y3; \
	VFMADD231PS Y0, Y2, Y12; \
	VFMADD231PS Y1, Y2, Y13; \
	VFMADD231PS Y0, Y3, Y14; \
	VFMADD231PS Y1, Y3, Y15

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

// func kernel6x16(kc int, a, b, c *float32, ldc int, alpha float32, load bool)
TEXT ·kernel6x16(SB), NOSPLIT, $0-45
	MOVQ kc+0(FP), CX
	MOVQ a+8(FP), SI
	MOVQ b+16(FP), DI
	MOVQ c+24(FP), DX
	MOVQ ldc+32(FP), R8
	SHLQ $2, R8

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
	PREFETCHT0 384(SI)
	STEP(0, 0)
	PREFETCHT0 512(DI)
	STEP(24, 64)
	PREFETCHT0 576(DI)
	STEP(48, 128)
	STEP(72, 192)
	ADDQ $96, SI
	ADDQ $256, DI
	DECQ BX
	JNZ  loop4

tail:
	TESTQ CX, CX
	JZ    done

loop1:
	STEP(0, 0)
	ADDQ $24, SI
	ADDQ $64, DI
	DECQ CX
	JNZ  loop1

done:
	VBROADCASTSS alpha+40(FP), Y0
	MOVBLZX load+44(FP), AX
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
