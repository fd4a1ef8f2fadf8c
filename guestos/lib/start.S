/* start.S: the image entry point. The kernel enters here at CPL 3 with ESP at the top
 * of guest memory; everything else is set up in C (__ilwaco_start). */
    .section .text.entry, "ax"
    .globl _start
_start:
    xorl %ebp, %ebp
    call __ilwaco_start
1:  jmp 1b
    .section .note.GNU-stack, "", @progbits
