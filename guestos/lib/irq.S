/* irq.S: entry point of delivered virtual interrupts (SET_HANDLER).
 * On entry the kernel has pushed the interrupted EIP, then EFLAGS, then the mask:
 * [esp] = mask, [esp+4] = eflags, [esp+8] = eip, and set irq_enable to 0.
 * Leaves with every register and the flags as they were, irq_enable back at 1. */
#include <denali/abi.h>
    .text
    .globl __irq_entry
__irq_entry:
    pushal                      /* 32 bytes: the mask is now at 32(%esp) */
    movl 32(%esp), %eax
    pushl %eax
    call __irq_dispatch
    addl $4, %esp
    popal
    lea 4(%esp), %esp           /* drop the mask without touching the flags */
    popfl
    movl $1, DENALI_ADDR_VREGS + DENALI_VREG_IRQ_ENABLE
    ret
    .section .note.GNU-stack, "", @progbits
