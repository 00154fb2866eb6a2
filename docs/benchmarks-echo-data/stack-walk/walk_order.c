// Whether resuming coroutines in the order of their stacks' addresses makes the page walks
// cheaper: a dependent load on each of M of 1,000 pages STRIDE KiB apart (a random subset
// each pass, as a wait wakes some of the connections), in random order or in address order,
// after a 512 MiB sweep that empties the TLB. Build: gcc -O2 -o walk_order walk_order.c;
// run pinned: taskset -c 0 ./walk_order STRIDE_KIB M. Output in walk_order.txt.
#include "probe.h"
static int cmp(const void*x,const void*y){size_t a=*(size_t*)x,b=*(size_t*)y;return a<b?-1:a>b;}
int main(int argc,char**argv){
  size_t n=1000, stride=(size_t)(argc>1?atoi(argv[1]):260)*1024; size_t m=argc>2?atoi(argv[2]):300;
  char *a=mmap(0,n*stride,PROT_READ|PROT_WRITE,MAP_PRIVATE|MAP_ANONYMOUS,-1,0);
  madvise(a,n*stride,MADV_NOHUGEPAGE);
  size_t pwn=(size_t)512<<20; char *pw=touched_pages(pwn);
  for(size_t i=0;i<n;i++) a[i*stride+stride-256]=1;
  size_t *perm=malloc(n*sizeof(size_t)); size_t *sub=malloc(m*sizeof(size_t));
  char **at=malloc(m*sizeof(char*));
  volatile size_t sink=0; double tr=0,ts=0; int reps=40; srand(7);
  for(int r=0;r<reps*2;r++){
    shuffled(perm,n);
    for(size_t k=0;k<m;k++) sub[k]=perm[k];
    int sorted=r&1; if(sorted) qsort(sub,m,sizeof(size_t),cmp);
    for(size_t k=0;k<m;k++) at[k]=a+sub[k]*stride+stride-256;
    link_ring(at,m);
    sink+=sweep_pages(pw,pwn,r);
    char *p=at[0];
    double t0=now(); for(size_t k=0;k<m;k++) p=*(char**)p; double d=now()-t0; sink+=(size_t)p;
    if(sorted) ts+=d; else tr+=d;
  }
  printf("stride %zu KiB, %zu of %zu pages: random order %.1f ns, address order %.1f ns per dependent load (after TLB sweep)\n",stride/1024,m,n,tr/reps/m,ts/reps/m);
  return 0;
}
