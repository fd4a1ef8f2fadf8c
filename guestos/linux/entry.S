/* entry.S: the personality's boot entry and its system-call entry.
 *
 * _start: the kernel enters here with ESP at the top of guest memory, which belongs to
 * the Linux program's stack (the host wrote argv, envp and the aux vector there), so
 * the first thing done is to move to the personality's own stack.
 *
 * lx_entry: every `int $0x80` of the program arrives here (SYSCALL_ENTRY), with the
 * program's registers untouched and its resume EIP in lx_resume_eip. The program's
 * ESP is saved, the registers are pushed as a struct lx_regs on the personality's
 * stack and lx_syscall() runs; then the (possibly changed) frame is restored and
 * execution resumes at lx_resume_eip on lx_user_esp. The personality never uses FS,
 * GS, x87 or SSE, so the program's TLS and floating-point state pass through. */
    .section .text.entry, "ax"
    .globl _start
_start:
    movl $lx_stack_top, %esp
    xorl %ebp, %ebp
    call __ilwaco_start
1:  jmp 1b

    .text
    .globl lx_entry
lx_entry:
    movl %esp, lx_user_esp
    movl $lx_stack_top, %esp
    pushfl
    pushl %ebp
    pushl %edi
    pushl %esi
    pushl %edx
    pushl %ecx
    pushl %ebx
    pushl %eax
    cld
    pushl %esp
    call lx_syscall
    addl $4, %esp
    popl %eax
    popl %ebx
    popl %ecx
    popl %edx
    popl %esi
    popl %edi
    popl %ebp
    popfl
    movl lx_user_esp, %esp
    jmp *lx_resume_eip

/* void lx_enter_program(eip, esp): start the program with Linux's initial registers
 * (all zero but ESP; EDX = 0 means no exit handler to register) and its initial x87
 * and SSE control words (0x037f: extended precision, exceptions masked; 0x1f80). */
    .globl lx_enter_program
lx_enter_program:
    fninit
    pushl $0x1f80
    ldmxcsr (%esp)
    addl $4, %esp
    movl 4(%esp), %eax
    movl 8(%esp), %ecx
    movl %eax, lx_resume_eip
    movl %ecx, %esp
    xorl %eax, %eax
    xorl %ebx, %ebx
    xorl %ecx, %ecx
    xorl %edx, %edx
    xorl %esi, %esi
    xorl %edi, %edi
    xorl %ebp, %ebp
    pushl $0x202
    popfl
    jmp *lx_resume_eip

/* void lx_memcpy(dst, src, n): rep movsl then movsb (the emulator runs it as one helper). */
    .globl lx_memcpy
lx_memcpy:
    pushl %edi
    pushl %esi
    movl 12(%esp), %edi
    movl 16(%esp), %esi
    movl 20(%esp), %ecx
    movl %ecx, %edx
    shrl $2, %ecx
    rep movsl
    movl %edx, %ecx
    andl $3, %ecx
    rep movsb
    popl %esi
    popl %edi
    ret

    .bss
    .balign 16
    .globl lx_stack
lx_stack:
    .space 128 * 1024
lx_stack_top:

    .data
    .balign 4
    .globl lx_resume_eip
lx_resume_eip:
    .long 0
    .globl lx_user_esp
lx_user_esp:
    .long 0
    .section .note.GNU-stack, "", @progbits
