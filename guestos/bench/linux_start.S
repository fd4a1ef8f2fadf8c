/* linux_start.S: entry of the Linux comparison binaries: main(argc, argv), then exit. */
    .text
    .globl _start
_start:
    movl (%esp), %eax       /* argc */
    leal 4(%esp), %ecx      /* argv */
    andl $-16, %esp
    subl $8, %esp
    pushl %ecx
    pushl %eax
    call linux_main
    movl %eax, %ebx
    movl $1, %eax           /* exit */
    int $0x80
    .section .note.GNU-stack, "", @progbits
