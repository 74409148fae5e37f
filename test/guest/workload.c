// SPDX-License-Identifier: Apache-2.0
/*
 * The test guest's known workload: one static binary, its role chosen by the name it runs under
 * (the kernel sets task_struct.comm from that name, so every role is a distinct named process).
 *
 *   kvmi-ticker   calls getppid(2) in a loop (one call every 20 ms): the syscall whose kernel
 *                 function (__x64_sys_getppid) tests set a breakpoint on; nothing else calls it.
 *   kvmi-marker   keeps a known 64-byte buffer at a fixed virtual address and prints
 *                 "KVMI-MARKER <text>" on the console whenever its content changes, so a memory write
 *                 made from outside is checked by the guest itself.
 *   kvmi-idle     sleeps forever (a named process that never runs).
 *
 * Built by test/guest/build.ts with `gcc -static`; see test/guest/README.md.
 */
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define MARKER_GVA ((void *)0x10000000)
#define MARKER_TEXT "KVMI-MARKER-0123456789abcdef"

static void nap_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

static int ticker(void) {
  for (;;) {
    syscall(SYS_getppid);
    nap_ms(20);
  }
}

static int marker(void) {
  char *page = mmap(MARKER_GVA, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
  if (page == MAP_FAILED) return 1;
  char seen[64];
  memset(page, 0, 4096);
  strcpy(page, MARKER_TEXT);
  memcpy(seen, page, sizeof seen);
  for (;;) {
    nap_ms(50);
    if (memcmp(seen, page, sizeof seen) != 0) {
      memcpy(seen, page, sizeof seen);
      seen[sizeof seen - 1] = 0;
      printf("KVMI-MARKER %s\n", seen);
      fflush(stdout);
    }
  }
}

int main(int argc, char **argv) {
  (void)argc;
  const char *name = strrchr(argv[0], '/');
  name = name ? name + 1 : argv[0];
  if (strcmp(name, "kvmi-ticker") == 0) return ticker();
  if (strcmp(name, "kvmi-marker") == 0) return marker();
  for (;;) pause();
}
