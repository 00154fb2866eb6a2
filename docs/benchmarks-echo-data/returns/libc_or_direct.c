// send+recv over loopback TCP: libc wrappers vs the syscall instruction in place, with
// K extra noinline frames above the call (K = 0 or 6). Alternating batches; median of batches.
// Also the user/system split of each variant (getrusage) over all its batches.
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <unistd.h>
#include <sys/syscall.h>
#include <sys/resource.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <sys/socket.h>
#include <x86intrin.h>
static int a, b; static char buf[64];
#define NI __attribute__((noinline))
static inline long raw6(long n, long a1, long a2, long a3, long a4, long a5, long a6) {
  long ret; register long r10 __asm__("r10") = a4; register long r8 __asm__("r8") = a5; register long r9 __asm__("r9") = a6;
  __asm__ volatile("syscall" : "=a"(ret) : "a"(n), "D"(a1), "S"(a2), "d"(a3), "r"(r10), "r"(r8), "r"(r9) : "rcx","r11","memory");
  return ret;
}
static int raw;
NI long s0(void){ return raw ? raw6(SYS_sendto, a, (long)buf, 64, MSG_NOSIGNAL, 0, 0) : send(a, buf, 64, MSG_NOSIGNAL); }
NI long r0(void){ return raw ? raw6(SYS_recvfrom, b, (long)buf, 64, 0, 0, 0) : recv(b, buf, 64, 0); }
#define LEVEL(q,p) NI long s##q(void){ long v = s##p(); __asm__ volatile("" ::: "memory"); return v+1; } \
                   NI long r##q(void){ long v = r##p(); __asm__ volatile("" ::: "memory"); return v+1; }
LEVEL(1,0) LEVEL(2,1) LEVEL(3,2) LEVEL(4,3) LEVEL(5,4) LEVEL(6,5)
typedef long (*fn)(void);
static double tv(struct timeval t){ return t.tv_sec*1e6 + t.tv_usec; }
static int cmp(const void*x,const void*y){ double a=*(double*)x,b=*(double*)y; return a<b?-1:a>b; }
int main(void){
  int l = socket(AF_INET, SOCK_STREAM, 0); struct sockaddr_in sa = {0}; sa.sin_family=AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK); socklen_t sl = sizeof sa;
  bind(l,(void*)&sa,sizeof sa); listen(l,1); getsockname(l,(void*)&sa,&sl);
  a = socket(AF_INET, SOCK_STREAM, 0); connect(a,(void*)&sa,sizeof sa); b = accept(l,0,0);
  int one=1; setsockopt(a,IPPROTO_TCP,TCP_NODELAY,&one,sizeof one);
  struct { const char* name; int raw; fn s, r; } v[] = {{"libc K=0",0,s0,r0},{"raw  K=0",1,s0,r0},{"libc K=6",0,s6,r6},{"raw  K=6",1,s6,r6}};
  enum { B = 60, N = 20000 }; double t[4][B]; double ut[4]={0}, st[4]={0};
  for (int batch = 0; batch < B; batch++) for (int j = 0; j < 4; j++) {
    raw = v[j].raw; struct rusage r0u, r1u; getrusage(RUSAGE_SELF,&r0u);
    uint64_t t0 = __rdtsc(); for (int i = 0; i < N; i++) { v[j].s(); v[j].r(); } uint64_t t1 = __rdtsc();
    getrusage(RUSAGE_SELF,&r1u); t[j][batch] = (t1-t0)/2.596/N;
    ut[j] += tv(r1u.ru_utime)-tv(r0u.ru_utime); st[j] += tv(r1u.ru_stime)-tv(r0u.ru_stime);
  }
  for (int j = 0; j < 4; j++) { qsort(t[j],B,8,cmp); printf("%s  median %.1f ns per send+recv [q1 %.1f q3 %.1f]  user %.1f sys %.1f ns per pair\n", v[j].name, t[j][B/2], t[j][B/4], t[j][3*B/4], ut[j]*1000/(B*(double)N), st[j]*1000/(B*(double)N)); }
}
