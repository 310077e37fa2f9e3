/*
 * Block I/O inside a benchmark guest: O_DIRECT, one request at a time, so the
 * figures are the VMM's request path and not the guest's page cache.
 *   blk-bench seqwrite DEV MIB     sequential 1 MiB writes, then fsync
 *   blk-bench seqread  DEV MIB     sequential 1 MiB reads
 *   blk-bench randread DEV COUNT   4 KiB reads at random 4 KiB-aligned offsets
 *   blk-bench randread-qdD DEV COUNT   the same from D threads at once: queue depth D
 *                                      (the guest spreads them over its vCPUs' queues)
 * Prints one line: RESULT <mode> <value> <unit> <requests>
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>
#include <linux/fs.h>
#include <pthread.h>

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

struct reader {
  int fd;
  unsigned long long blocks;
  long count;
  unsigned seed;
  int failed;
};

static void *random_reads(void *arg) {
  struct reader *r = arg;
  void *buf;
  if (posix_memalign(&buf, 4096, 4096)) return NULL;
  for (long i = 0; i < r->count; i++) {
    unsigned long long b = ((unsigned long long)rand_r(&r->seed) * RAND_MAX + rand_r(&r->seed)) % r->blocks;
    if (pread(r->fd, buf, 4096, b * 4096) != 4096) r->failed = 1;
  }
  free(buf);
  return NULL;
}

int main(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: blk-bench seqwrite|seqread|randread DEV N\n");
    return 2;
  }
  const char *mode = argv[1];
  long n = atol(argv[3]);
  int writing = strcmp(mode, "seqwrite") == 0;
  int fd = open(argv[2], (writing ? O_WRONLY : O_RDONLY) | O_DIRECT);
  if (fd < 0) {
    perror(argv[2]);
    return 1;
  }
  unsigned long long size = 0;
  ioctl(fd, BLKGETSIZE64, &size);
  const size_t big = 1 << 20, small = 4096;
  void *buf;
  if (posix_memalign(&buf, 4096, big)) return 1;
  memset(buf, 0xa5, big);
  double t0 = now();
  long requests = 0;
  if (strncmp(mode, "randread-qd", 11) == 0) {
    int depth = atoi(mode + 11);
    if (depth < 1 || depth > 256) return 2;
    pthread_t threads[256];
    struct reader readers[256];
    for (int t = 0; t < depth; t++) {
      readers[t] = (struct reader){fd, size / small, n / depth, 42 + t, 0};
      pthread_create(&threads[t], NULL, random_reads, &readers[t]);
    }
    for (int t = 0; t < depth; t++) {
      pthread_join(threads[t], NULL);
      if (readers[t].failed) { fprintf(stderr, "pread failed\n"); return 1; }
      requests += readers[t].count;
    }
    double dt = now() - t0;
    printf("RESULT %s %.0f IOPS %ld\n", mode, requests / dt, requests);
  } else if (strcmp(mode, "randread") == 0) {
    unsigned long long blocks = size / small;
    srand(42);
    for (long i = 0; i < n; i++, requests++) {
      unsigned long long b = ((unsigned long long)rand() * RAND_MAX + rand()) % blocks;
      if (pread(fd, buf, small, b * small) != (ssize_t)small) { perror("pread"); return 1; }
    }
    double dt = now() - t0;
    printf("RESULT randread %.0f IOPS %ld\n", n / dt, requests);
  } else {
    for (long i = 0; i < n; i++, requests++) {
      off_t off = (off_t)((i * big) % (size - size % big));
      ssize_t r = writing ? pwrite(fd, buf, big, off) : pread(fd, buf, big, off);
      if (r != (ssize_t)big) { perror(mode); return 1; }
    }
    if (writing) fsync(fd);
    double dt = now() - t0;
    printf("RESULT %s %.1f MB/s %ld\n", mode, n * (big / 1e6) / dt, requests);
  }
  return 0;
}
