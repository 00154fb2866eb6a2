"""Per echoed message: the server's context switches, user and kernel time (/proc/PID/stat),
and the TCP counters of /proc/net/snmp and /proc/net/netstat (segments, pure ACKs, delayed
ACKs...), for echo servers run one after the other, round after round.

    python3 kernel_counters.py BENCH SERVERS ROUNDS CONNS SIZE

BENCH is an echo bench binary (target/release/deps/echo-*), whose load role drives each
server (1 s warm-up, 3 s window); a SERVER is a server kind of BENCH (`copas`, `polling`…)
or `PATH:KIND` to serve with another build's binary. Counters are divided by all the
messages the load echoed (warm-up included). Diagnostic; not run by CI.
"""
import subprocess, sys, time, os
BIN=sys.argv[1]; servers=sys.argv[2].split(','); rounds=int(sys.argv[3]); conns=sys.argv[4]; size=sys.argv[5]
def snap():
    d={}
    for f in ('/proc/net/snmp','/proc/net/netstat'):
        lines=open(f).read().split('\n')
        for i in range(0,len(lines)-1,2):
            h=lines[i].split(); v=lines[i+1].split()
            if not h: continue
            for k,x in zip(h[1:],v[1:]):
                try: d[h[0]+k]=int(x)
                except: pass
    return d
KEYS=['Tcp:OutSegs','Tcp:InSegs','TcpExt:DelayedACKs','TcpExt:TCPPureAcks','TcpExt:TCPHPAcks','TcpExt:TCPHPHits','TcpExt:TCPBacklogCoalesce','TcpExt:TCPAutoCorking','TcpExt:TCPRcvCoalesce','TcpExt:TCPOFOQueue','TcpExt:TCPBacklogDrop','TcpExt:TCPDelivered' ]
for r in range(rounds):
    for s in servers:
        sb,ss=(s.split(':') if ':' in s else (BIN,s))
        p=subprocess.Popen([sb,'__server',ss],stdout=subprocess.PIPE,text=True)
        line=p.stdout.readline(); port=line.strip().split('=')[1]
        a=snap()
        out=subprocess.run([BIN,'__load',port,str(p.pid),conns,size,'1','3','0'],capture_output=True,text=True).stdout
        b=snap()
        st=open('/proc/%d/status'%p.pid).read()
        vcs=[int(l.split()[1]) for l in st.split('\n') if 'ctxt_switches' in l]
        t=open('/proc/%d/stat'%p.pid).read().rsplit(')',1)[1].split()
        ut,stt=int(t[11]),int(t[12])
        p.kill(); p.wait()
        kv=dict(x.split('=',1) for x in out.split() if '=' in x)
        msgs=float(kv.get('all_msgs',kv.get('msgs','0')))
        print(s.split('/')[-1][:22], 'rate %.0f'%(float(kv['msgs'])/float(kv['window'])), 'vcs/msg %.4f ivcs/msg %.4f user %.3fus sys %.3fus'%(vcs[0]/msgs, vcs[1]/msgs, ut*1e4/msgs, stt*1e4/msgs), ' '.join('%s=%.3f'%(k.split(':')[1],(b.get(k,0)-a.get(k,0))/msgs) for k in KEYS), flush=True)
