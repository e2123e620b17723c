/*
 * kvmcheck: the nested testbed's smoke test, built statically by
 * scripts/testbed/build.sh and run inside L1 by scripts/testbed/run.sh.
 *
 * Proves that /dev/kvm works in L1: checks KVM_GET_API_VERSION == 12, creates
 * a VM and a vCPU, and runs a three-instruction real-mode guest
 * (mov al, 0x42; out 0x10, al; hlt) to its port-I/O exit and its HLT exit.
 * Prints one line per step; exit status 0 on success, 1 on the first failure.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>

#define GUEST_ADDR 0x1000
#define GUEST_PORT 0x10
#define GUEST_VALUE 0x42

static int fail(const char *what)
{
	printf("KVMCHECK-FAIL: %s: %s\n", what, strerror(errno));
	return 1;
}

static double now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

int main(void)
{
	static const uint8_t code[] = {
		0xb0, GUEST_VALUE,     /* mov al, 0x42 */
		0xe6, GUEST_PORT,      /* out 0x10, al */
		0xf4,                  /* hlt */
	};
	double start = now_ms();
	int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (kvm < 0)
		return fail("open /dev/kvm");

	int api = ioctl(kvm, KVM_GET_API_VERSION, 0);
	printf("KVMCHECK-API-VERSION=%d\n", api);
	if (api != 12) {
		printf("KVMCHECK-FAIL: KVM_GET_API_VERSION is %d, expected 12\n", api);
		return 1;
	}

	int vm = ioctl(kvm, KVM_CREATE_VM, 0);
	if (vm < 0)
		return fail("KVM_CREATE_VM");
	printf("KVMCHECK-VM-CREATED\n");

	uint8_t *mem = mmap(NULL, 0x1000, PROT_READ | PROT_WRITE,
			    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (mem == MAP_FAILED)
		return fail("mmap guest memory");
	memcpy(mem, code, sizeof(code));
	struct kvm_userspace_memory_region region = {
		.slot = 0,
		.guest_phys_addr = GUEST_ADDR,
		.memory_size = 0x1000,
		.userspace_addr = (uintptr_t)mem,
	};
	if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region) < 0)
		return fail("KVM_SET_USER_MEMORY_REGION");

	int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
	if (vcpu < 0)
		return fail("KVM_CREATE_VCPU");
	int run_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
	if (run_size < 0)
		return fail("KVM_GET_VCPU_MMAP_SIZE");
	struct kvm_run *run = mmap(NULL, run_size, PROT_READ | PROT_WRITE,
				   MAP_SHARED, vcpu, 0);
	if (run == MAP_FAILED)
		return fail("mmap kvm_run");

	struct kvm_sregs sregs;
	if (ioctl(vcpu, KVM_GET_SREGS, &sregs) < 0)
		return fail("KVM_GET_SREGS");
	sregs.cs.base = 0;
	sregs.cs.selector = 0;
	if (ioctl(vcpu, KVM_SET_SREGS, &sregs) < 0)
		return fail("KVM_SET_SREGS");
	struct kvm_regs regs = { .rip = GUEST_ADDR, .rflags = 0x2 };
	if (ioctl(vcpu, KVM_SET_REGS, &regs) < 0)
		return fail("KVM_SET_REGS");

	if (ioctl(vcpu, KVM_RUN, 0) < 0)
		return fail("KVM_RUN (1)");
	if (run->exit_reason != KVM_EXIT_IO || run->io.port != GUEST_PORT ||
	    run->io.direction != KVM_EXIT_IO_OUT ||
	    ((uint8_t *)run)[run->io.data_offset] != GUEST_VALUE) {
		printf("KVMCHECK-FAIL: expected OUT 0x%x to port 0x%x, got exit reason %u\n",
		       GUEST_VALUE, GUEST_PORT, run->exit_reason);
		return 1;
	}
	printf("KVMCHECK-GUEST-OUT=0x%x\n", ((uint8_t *)run)[run->io.data_offset]);

	if (ioctl(vcpu, KVM_RUN, 0) < 0)
		return fail("KVM_RUN (2)");
	if (run->exit_reason != KVM_EXIT_HLT) {
		printf("KVMCHECK-FAIL: expected HLT exit, got exit reason %u\n",
		       run->exit_reason);
		return 1;
	}
	printf("KVMCHECK-GUEST-HLT\n");
	printf("KVMCHECK-OK %.1f ms\n", now_ms() - start);
	return 0;
}
