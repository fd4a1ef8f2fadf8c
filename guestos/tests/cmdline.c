/* test-cmdline: prints argc, every argv and the value of key=. */
#include <ilwaco.h>
#include <stdio.h>

int main(int argc, char **argv)
{
    char v[128];
    printf("argc=%d\n", argc);
    for (int i = 0; i < argc; i++)
        printf("argv[%d]=%s\n", i, argv[i]);
    if (cmdline_get("key", v, sizeof v) >= 0)
        printf("key=%s\n", v);
    else
        printf("key absent\n");
    return 0;
}
