// Whether 1,000 coroutine stack tops keep their translations when nothing else runs: a
// dependent load on each of N pages STRIDE KiB apart (a stack top's place in its slot; copas's
// default slot is 256 KiB of stack + a 4 KiB guard = 260 KiB), in random order, over and over
// with no sweep between passes; prints the best pass. Build: gcc -O2 -o steady steady.c; run
// pinned: taskset -c 0 ./steady STRIDE_KIB [N=1000] [HUGE=0]. Output in steady.txt.
#include "probe.h"
int main(int argc,char**argv){
  size_t n=argc>2?atoi(argv[2]):1000, stride=(size_t)atoi(argv[1])*1024;
  int huge=argc>3?atoi(argv[3]):0;
  size_t len=n*stride+(2<<20);
  char *base=mmap(0,len,PROT_READ|PROT_WRITE,MAP_PRIVATE|MAP_ANONYMOUS,-1,0);
  char *sparse=(char*)(((uintptr_t)base+(2<<20)-1)&~((uintptr_t)(2<<20)-1));
  if(huge) madvise(sparse,n*stride,MADV_HUGEPAGE); else madvise(sparse,n*stride,MADV_NOHUGEPAGE);
  size_t *perm=malloc(n*sizeof(size_t)); srand(1); shuffled(perm,n);
  char **sp=malloc(n*sizeof(char*));
  for(size_t i=0;i<n;i++){sp[i]=sparse+perm[i]*stride+stride-256;}
  link_ring(sp,n);
  char *p=sp[0]; for(int w=0;w<100;w++) for(size_t i=0;i<n;i++) p=*(char**)p;
  double best=1e18;
  for(int r=0;r<50;r++){ double t0=now(); for(size_t i=0;i<n;i++) p=*(char**)p; double d=now()-t0; if(d<best)best=d; }
  printf("stride %zu KiB n %zu huge %d: %.1f ns per load (best of 50 steady passes) %p\n",stride/1024,n,huge,best/n,(void*)p);
  return 0;
}
