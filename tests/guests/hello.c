/* hello: prints one line and resets. Expected output: "HELLO FROM TINY GUEST\n". */
#include "lib.h"

void guest_main(u8 *zero_page)
{
    (void)zero_page;
    puts("HELLO FROM TINY GUEST");
    reset();
}
