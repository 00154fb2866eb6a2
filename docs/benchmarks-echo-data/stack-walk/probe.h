// What the stack-walk probes (page_walk.c, steady.c, walk_order.c) share: a clock, a random
// order of N slots, a ring of pointers to chase through dependent loads, and a sweep of one
// line on each 4 KiB page of a large region, which empties the TLB but little of the caches.
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

static inline double now(void){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec*1e9+t.tv_nsec;}

// perm[0..n) = 0..n-1 in a random order (Fisher-Yates on rand(), so srand fixes it).
static inline void shuffled(size_t *perm,size_t n){
  for(size_t i=0;i<n;i++)perm[i]=i;
  for(size_t i=n-1;i>0;i--){size_t j=rand()%(i+1);size_t t=perm[i];perm[i]=perm[j];perm[j]=t;}
}

// Each at[i] points to at[i+1], the last to the first: chasing it is n dependent loads.
static inline void link_ring(char **at,size_t n){for(size_t i=0;i<n;i++)*(char**)at[i]=at[(i+1)%n];}

// A region of len bytes with every page touched, for sweep_pages.
static inline char *touched_pages(size_t len){
  char *pw=mmap(0,len,PROT_READ|PROT_WRITE,MAP_PRIVATE|MAP_ANONYMOUS,-1,0);
  madvise(pw,len,MADV_NOHUGEPAGE); for(size_t i=0;i<len;i+=4096) pw[i]=1;
  return pw;
}

// KiB of [at, at+len) backed by transparent huge pages: the AnonHugePages of the mappings
// /proc/self/smaps lists inside it.
static inline size_t huge_kib(const char *at,size_t len){
  FILE *f=fopen("/proc/self/smaps","r"); if(!f) return 0;
  char line[256]; size_t kib=0; int inside=0; unsigned long lo,hi,k;
  while(fgets(line,sizeof line,f)){
    if(sscanf(line,"%lx-%lx ",&lo,&hi)==2) inside=lo<(unsigned long)(at+len)&&hi>(unsigned long)at;
    else if(inside&&sscanf(line,"AnonHugePages: %lu kB",&k)==1) kib+=k;
  }
  fclose(f); return kib;
}

// One load on each page of the region (a line that moves with r, so the same lines do not
// stay cached from one sweep to the next); the sum keeps the loads.
static inline size_t sweep_pages(const char *pw,size_t len,int r){
  size_t s=0; for(size_t i=0;i<len;i+=4096) s+=pw[i+(r*64)%4096]; return s;
}
