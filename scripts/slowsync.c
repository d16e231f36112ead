// Test shim (not shipped): makes fdatasync/fsync take SLOW_SYNC_US longer,
// like an SD card, to measure the relay's commit pipeline on a slow disk.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <unistd.h>
static useconds_t delay(void) { const char *s = getenv("SLOW_SYNC_US"); return s ? (useconds_t)atoi(s) : 3000; }
int fdatasync(int fd) { static int (*real)(int); if (!real) real = dlsym(RTLD_NEXT, "fdatasync"); usleep(delay()); return real(fd); }
int fsync(int fd) { static int (*real)(int); if (!real) real = dlsym(RTLD_NEXT, "fsync"); usleep(delay()); return real(fd); }
