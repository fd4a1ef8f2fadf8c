/* sock.c: placeholder, replaced below */
#include "lx.h"
void sock_init(void) {}
#define STUB(n) long n(long a, long b, long c, long d, long e, long f) { (void)a, (void)b, (void)c, (void)d, (void)e, (void)f; return -LX_ENOSYS; }
STUB(sys_socketcall) STUB(sys_socket) STUB(sys_socketpair) STUB(sys_bind) STUB(sys_connect)
STUB(sys_listen) STUB(sys_accept4) STUB(sys_getsockopt) STUB(sys_setsockopt) STUB(sys_getsockname)
STUB(sys_getpeername) STUB(sys_sendto) STUB(sys_recvfrom) STUB(sys_sendmsg) STUB(sys_recvmsg) STUB(sys_shutdown)
