/* switch.S: cooperative context switch between guestos threads.
 * void __thread_switch(uint32_t *save_sp, uint32_t load_sp)
 * Saves the callee-saved registers on the current stack, stores ESP in *save_sp, loads
 * load_sp and restores the registers saved there. A new thread's stack is prepared by
 * thread_create so that the first switch "returns" into __thread_boot. */
    .text
    .globl __thread_switch
__thread_switch:
    movl 4(%esp), %eax
    movl 8(%esp), %ecx
    pushl %ebp
    pushl %ebx
    pushl %esi
    pushl %edi
    movl %esp, (%eax)
    movl %ecx, %esp
    popl %edi
    popl %esi
    popl %ebx
    popl %ebp
    ret

    .globl __thread_boot
__thread_boot:
    call __thread_main
1:  jmp 1b
    .section .note.GNU-stack, "", @progbits
