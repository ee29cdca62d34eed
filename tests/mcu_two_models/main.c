/* Runs two models of one firmware on their verification inputs and prints the largest
 * difference from onnxruntime's outputs of each. */
#include <stdio.h>

double check_first(void);
double check_second(void);

int main(void) {
  printf("hwcomp-two first %.9g\n", check_first());
  printf("hwcomp-two second %.9g\n", check_second());
  return 0;
}
