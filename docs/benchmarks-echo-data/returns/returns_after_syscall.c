// Cycles (rdtsc) from the instruction after a system call back up through K noinline frames.
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <unistd.h>
#include <sys/syscall.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <sys/socket.h>
#include <x86intrin.h>
static int a, b;
static char buf[64];
static uint64_t t_after;
#define NI __attribute__((noinline))
static inline long raw6(long n, long a1, long a2, long a3, long a4, long a5, long a6) {
  long ret; register long r10 __asm__("r10") = a4; register long r8 __asm__("r8") = a5; register long r9 __asm__("r9") = a6;
  __asm__ volatile("syscall" : "=a"(ret) : "a"(n), "D"(a1), "S"(a2), "d"(a3), "r"(r10), "r"(r8), "r"(r9) : "rcx","r11","memory");
  return ret;
}
static int mode; // 0: sendto, 1: recvfrom, 2: no syscall
NI long leaf(void){
  long r;
  if (mode == 0) r = raw6(SYS_sendto, a, (long)buf, 64, MSG_NOSIGNAL, 0, 0);
  else if (mode == 1) r = raw6(SYS_recvfrom, b, (long)buf, 64, 0, 0, 0);
  else r = 64;
  _mm_lfence(); t_after = __rdtsc(); _mm_lfence();
  return r;
}
#define LEVEL(q,p) NI long f##q(void){ long v = f##p(); __asm__ volatile("" ::: "memory"); return v+1; }
NI long f0(void){ long v = leaf(); __asm__ volatile("" ::: "memory"); return v; }
LEVEL(1,0) LEVEL(2,1) LEVEL(3,2) LEVEL(4,3) LEVEL(5,4) LEVEL(6,5) LEVEL(7,6) LEVEL(8,7)
LEVEL(9,8) LEVEL(10,9) LEVEL(11,10) LEVEL(12,11)
typedef long (*fn)(void);
static fn F[] = {f0,f1,f2,f3,f4,f5,f6,f7,f8,f9,f10,f11,f12};
static int cmp(const void*x,const void*y){ uint64_t a=*(uint64_t*)x,b=*(uint64_t*)y; return a<b?-1:a>b; }
int main(void){
  int l = socket(AF_INET, SOCK_STREAM, 0); struct sockaddr_in sa = {0}; sa.sin_family=AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK); socklen_t sl = sizeof sa;
  bind(l,(void*)&sa,sizeof sa); listen(l,1); getsockname(l,(void*)&sa,&sl);
  a = socket(AF_INET, SOCK_STREAM, 0); connect(a,(void*)&sa,sizeof sa); b = accept(l,0,0);
  int one=1; setsockopt(a,IPPROTO_TCP,TCP_NODELAY,&one,sizeof one);
  enum { N = 100000 };
  static uint64_t s[N], r[N], z[N];
  for (int k = 0; k <= 12; k += 2) {
    for (int i = 0; i < N; i++) {
      uint64_t t;
      mode = 0; F[k](); t = __rdtsc(); s[i] = t - t_after;
      mode = 1; F[k](); t = __rdtsc(); r[i] = t - t_after;
      mode = 2; F[k](); t = __rdtsc(); z[i] = t - t_after;
    }
    qsort(s,N,8,cmp); qsort(r,N,8,cmp); qsort(z,N,8,cmp);
    printf("k=%2d  ticks back up, median: after sendto %4lu  after recvfrom %4lu  no syscall %4lu\n", k, s[N/2], r[N/2], z[N/2]);
  }
}
