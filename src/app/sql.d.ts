/** SQL files are bundled as text (esbuild `--loader:.sql=text`). */
declare module "*.sql" {
  const text: string;
  export default text;
}
