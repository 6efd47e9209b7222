/* vecregs avx512|avx2 DIR: vector registers holding known values across a dump.
 *
 * An assembly loop loads every vector register (avx512: zmm0-zmm31 and the
 * mask registers k1-k7; avx2: ymm0-ymm15) and r12-r15 with known values,
 * renames DIR/.ready.vec to DIR/ready with a raw syscall (which keeps every
 * vector register), then spins with `pause` until the SIGTERM handler sets
 * the flag it polls. This is a busy loop on purpose: the registers must be
 * live in the thread, not saved in memory, when the dump happens. After the
 * loop the registers are stored and compared with the values loaded.
 * Prints SKIP and exits 77 when the CPU lacks the instruction set. */
#include "wl.h"

#include <sys/syscall.h>

static uint64_t vin[32][8] __attribute__((aligned(64)));
static uint64_t vout[32][8] __attribute__((aligned(64)));
static uint16_t kin[8], kout[8];
static uint64_t gin[4], gout[4];
static long rename_result = -1;

#define LZ(n) "vmovdqu64 " #n "*64(%[in]), %%zmm" #n "\n\t"
#define SZ(n) "vmovdqu64 %%zmm" #n ", " #n "*64(%[out])\n\t"
#define LK(n) "kmovw " #n "*2(%[kin]), %%k" #n "\n\t"
#define SK(n) "kmovw %%k" #n ", " #n "*2(%[kout])\n\t"
#define LY(n) "vmovdqu " #n "*64(%[in]), %%ymm" #n "\n\t"
#define SY(n) "vmovdqu %%ymm" #n ", " #n "*64(%[out])\n\t"

#define GPR_IN                                                                                                 \
	"mov 0(%[gin]), %%r12\n\tmov 8(%[gin]), %%r13\n\tmov 16(%[gin]), %%r14\n\tmov 24(%[gin]), %%r15\n\t"
#define GPR_OUT                                                                                                \
	"mov %%r12, 0(%[gout])\n\tmov %%r13, 8(%[gout])\n\tmov %%r14, 16(%[gout])\n\tmov %%r15, 24(%[gout])\n\t"
/* rename(rdi, rsi) with a raw syscall, then spin until the flag is set. */
#define READY_AND_SPIN                                                                                         \
	"mov %[nr], %%eax\n\t"                                                                                 \
	"syscall\n\t"                                                                                          \
	"mov %%rax, %[res]\n\t"                                                                                \
	"1: pause\n\t"                                                                                         \
	"cmpl $0, %[flag]\n\t"                                                                                 \
	"je 1b\n\t"

__attribute__((target("avx512f"), noinline)) static void spin_avx512(const char *from, const char *to)
{
	__asm__ volatile(LZ(0) LZ(1) LZ(2) LZ(3) LZ(4) LZ(5) LZ(6) LZ(7) LZ(8) LZ(9) LZ(10) LZ(11) LZ(12) LZ(13)
				 LZ(14) LZ(15) LZ(16) LZ(17) LZ(18) LZ(19) LZ(20) LZ(21) LZ(22) LZ(23) LZ(24) LZ(25)
					 LZ(26) LZ(27) LZ(28) LZ(29) LZ(30) LZ(31) LK(1) LK(2) LK(3) LK(4) LK(5)
						 LK(6) LK(7) GPR_IN READY_AND_SPIN GPR_OUT SZ(0) SZ(1) SZ(2) SZ(3)
							 SZ(4) SZ(5) SZ(6) SZ(7) SZ(8) SZ(9) SZ(10) SZ(11) SZ(12)
								 SZ(13) SZ(14) SZ(15) SZ(16) SZ(17) SZ(18) SZ(19)
									 SZ(20) SZ(21) SZ(22) SZ(23) SZ(24) SZ(25)
										 SZ(26) SZ(27) SZ(28) SZ(29) SZ(30)
											 SZ(31) SK(1) SK(2) SK(3)
												 SK(4) SK(5) SK(6) SK(7)
			 : [res] "=m"(rename_result)
			 : [in] "r"(vin), [out] "r"(vout), [kin] "r"(kin), [kout] "r"(kout), [gin] "r"(gin),
			   [gout] "r"(gout), [flag] "m"(wl_term), [nr] "i"(SYS_rename), "D"(from), "S"(to)
			 : "rax", "rcx", "r11", "r12", "r13", "r14", "r15", "memory", "cc", "xmm0", "xmm1", "xmm2",
			   "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13",
			   "xmm14", "xmm15", "xmm16", "xmm17", "xmm18", "xmm19", "xmm20", "xmm21", "xmm22", "xmm23",
			   "xmm24", "xmm25", "xmm26", "xmm27", "xmm28", "xmm29", "xmm30", "xmm31", "k1", "k2", "k3",
			   "k4", "k5", "k6", "k7");
}

__attribute__((target("avx2"), noinline)) static void spin_avx2(const char *from, const char *to)
{
	__asm__ volatile(LY(0) LY(1) LY(2) LY(3) LY(4) LY(5) LY(6) LY(7) LY(8) LY(9) LY(10) LY(11) LY(12) LY(13)
				 LY(14) LY(15) GPR_IN READY_AND_SPIN GPR_OUT SY(0) SY(1) SY(2) SY(3) SY(4) SY(5)
					 SY(6) SY(7) SY(8) SY(9) SY(10) SY(11) SY(12) SY(13) SY(14) SY(15)
			 : [res] "=m"(rename_result)
			 : [in] "r"(vin), [out] "r"(vout), [gin] "r"(gin), [gout] "r"(gout), [flag] "m"(wl_term),
			   [nr] "i"(SYS_rename), "D"(from), "S"(to)
			 : "rax", "rcx", "r11", "r12", "r13", "r14", "r15", "memory", "cc", "xmm0", "xmm1", "xmm2",
			   "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13",
			   "xmm14", "xmm15");
}

int main(int argc, char **argv)
{
	wl_init(argc, argv, 2);
	int avx512 = !strcmp(argv[1], "avx512");
	if (!avx512 && strcmp(argv[1], "avx2") != 0) {
		dprintf(2, "usage: vecregs avx512|avx2 DIR\n");
		return 2;
	}
	__builtin_cpu_init();
	if (avx512 ? !__builtin_cpu_supports("avx512f") : !__builtin_cpu_supports("avx2")) {
		printf("SKIP: the CPU lacks %s\n", argv[1]);
		return 77;
	}
	int nregs = avx512 ? 32 : 16, words = avx512 ? 8 : 4;
	for (int r = 0; r < 32; r++)
		for (int w = 0; w < 8; w++)
			vin[r][w] = 0x0101010101010101ULL * (uint64_t)(r + 1) ^ (uint64_t)w << 56 ^ 0xA5A5000000005A5AULL;
	for (int k = 1; k < 8; k++)
		kin[k] = (uint16_t)(0x1111 * k ^ 0x8001);
	for (int g = 0; g < 4; g++)
		gin[g] = 0xFEEDFACE00000000ULL | (uint64_t)(g + 12);

	char from[4096], to[4096];
	wl_path(from, sizeof(from), ".ready.vec");
	wl_path(to, sizeof(to), "ready");
	wl_write(".ready.vec", "%s registers loaded\n", argv[1]);
	if (avx512)
		spin_avx512(from, to);
	else
		spin_avx2(from, to);

	if (wl_corrupt())
		((unsigned char *)vout)[3 * 64 + 5] ^= 1;
	if (rename_result != 0)
		wl_fail("rename of the ready file from the loop returned %ld", rename_result);
	for (int r = 0; r < nregs && !wl_failed(); r++)
		for (int w = 0; w < words; w++)
			if (vout[r][w] != vin[r][w]) {
				wl_fail("%s%d word %d is %#llx, expected %#llx", avx512 ? "zmm" : "ymm", r, w,
					(unsigned long long)vout[r][w], (unsigned long long)vin[r][w]);
				break;
			}
	if (avx512)
		for (int k = 1; k < 8; k++)
			if (kout[k] != kin[k]) {
				wl_fail("k%d is %#x, expected %#x", k, kout[k], kin[k]);
				break;
			}
	for (int g = 0; g < 4; g++)
		if (gout[g] != gin[g]) {
			wl_fail("r%d is %#llx, expected %#llx", 12 + g, (unsigned long long)gout[g],
				(unsigned long long)gin[g]);
			break;
		}
	return wl_finish();
}
