#include <stdio.h>

int main(void)
{
    printf("Hello from a C program built on the farm\n");
    return 0;
}
