// The cost of a page walk on this machine: 1,000 dependent loads, each on its own page
// (a coroutine stack top's position, 260 KiB apart by default) or all within 16 pages, after
// sweeping the caches or the TLB. Build: gcc -O2 -o page_walk page_walk.c; run pinned:
// taskset -c 0 ./page_walk [stride KiB, default 260] [HUGE=0]. HUGE=1 puts the 1,000 pages
// in transparent huge pages (what unguarded huge-page stacks would give) and prints how many
// of the region's bytes the kernel backed with them. Output in page_walk.txt.
#include "probe.h"
int main(int argc,char**argv){
  size_t n=1000, stride=(argc>1?atoi(argv[1]):260)*1024; int huge=argc>2?atoi(argv[2]):0;
  char *sparse=mmap(0,n*stride,PROT_READ|PROT_WRITE,MAP_PRIVATE|MAP_ANONYMOUS,-1,0);
  madvise(sparse,n*stride,huge?MADV_HUGEPAGE:MADV_NOHUGEPAGE);
  char *dense=mmap(0,1<<20,PROT_READ|PROT_WRITE,MAP_PRIVATE|MAP_ANONYMOUS,-1,0);
  size_t evn=64<<20; char *ev=malloc(evn); memset(ev,1,evn);
  size_t pwn=(size_t)512<<20; char *pw=touched_pages(pwn);
  // pointer chains in random order
  size_t *perm=malloc(n*sizeof(size_t)); srand(1); shuffled(perm,n);
  char **sp=malloc(n*sizeof(char*)),**dp=malloc(n*sizeof(char*));
  for(size_t i=0;i<n;i++){sp[i]=sparse+perm[i]*stride+stride-256; dp[i]=dense+perm[i]*128;}
  link_ring(sp,n); link_ring(dp,n);
  if(huge) printf("huge pages: %zu KiB of the sparse region\n",huge_kib(sparse,n*stride));
  volatile size_t sink=0;
  for(int mode=0;mode<4;mode++){
    double tot=0; int reps=20;
    for(int r=0;r<reps;r++){
      if(mode==0||mode==1){ for(size_t i=0;i<evn;i+=64) sink+=ev[i]; }      // evict caches (and partly TLB)
      else sink+=sweep_pages(pw,pwn,r);                                      // thrash TLB: 131072 pages
      char *p=(mode&1)?dp[0]:sp[0];
      double t0=now();
      for(size_t i=0;i<n;i++) p=*(char**)p;
      tot+=now()-t0; sink+=(size_t)p;
    }
    printf("%s after %s sweep: %.1f ns per dependent load\n",(mode&1)?"dense (16 pages) ":"sparse (1000 pages)",mode<2?"64 MiB cache":"512 MiB page",tot/reps/n);
  }
  return 0;
}
