"""The sound-class vocabulary of the training corpus: one entry per class, with its names.

Every caption is built from these phrases verbatim, so a class is "named" by a caption exactly
when one of `phrases(label)` occurs in it (tests rely on this).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SoundClass:
    label: str  # snake_case id used in manifests and events
    clause: str  # a full sentence-like phrase: "a dog barks"
    names: tuple[str, ...]  # noun phrases: "a dog barking", "barking"
    group: str  # coarse family, for captions ("animal", "music", ...)
    countable: bool = False  # short discrete events: captions may say "twice"
    ambience: bool = False  # can serve as a low-level background bed under other sounds

    def phrases(self) -> tuple[str, ...]:
        return (self.clause, *self.names)


def _c(label: str, clause: str, names: str, group: str, flags: str = "") -> SoundClass:
    # flags: "c" countable, "a" ambience. names are "|"-separated to keep the table one line a class.
    return SoundClass(label, clause, tuple(names.split("|")), group, "c" in flags, "a" in flags)


_TABLE = [
    # animals
    _c("dog", "a dog barks", "a dog barking|dog barking|barking", "animal", "c"),
    _c("bird", "birds chirp", "birds chirping|bird song|a bird tweeting|birdsong", "animal", "a"),
    _c("crow", "a crow caws", "a crow cawing|crow calls", "animal", "c"),
    _c("rooster", "a rooster crows", "a rooster crowing|a crowing rooster", "animal", "c"),
    _c("chicken", "chickens cluck", "chickens clucking|a hen clucking", "animal"),
    _c("cow", "a cow moos", "a cow mooing|mooing cattle", "animal", "c"),
    _c("pig", "a pig oinks", "a pig grunting|pig oinking", "animal", "c"),
    _c("sheep", "a sheep bleats", "sheep bleating|a bleating sheep", "animal", "c"),
    _c("horse", "a horse neighs", "a horse neighing|a whinnying horse", "animal", "c"),
    _c("horse_gallop", "a horse gallops", "horse hooves galloping|a galloping horse|clip-clop of hooves",
       "animal"),
    _c("wolf", "a wolf howls", "a wolf howling|a wolf growling|a howling wolf", "animal", "c"),
    _c("owl", "an owl hoots", "an owl hooting|a hooting owl", "animal", "c"),
    _c("seagull", "seagulls cry", "seagulls crying|gull calls", "animal"),
    _c("duck", "a duck quacks", "a duck quacking|quacking", "animal", "c"),
    _c("frog", "frogs croak", "frogs croaking|croaking frogs", "animal", "a"),
    _c("crickets", "crickets chirp", "crickets chirping|insects at night", "animal", "a"),
    _c("bees", "bees buzz", "bees buzzing|a swarm of bees", "animal", "a"),
    _c("elephant", "an elephant trumpets", "an elephant trumpeting|an elephant call", "animal", "c"),
    _c("cat", "a cat meows", "a cat meowing|meowing", "animal", "c"),
    _c("goat", "a goat bleats", "a goat bleating|a bleating goat", "animal", "c"),
    _c("lion", "a lion roars", "a lion roaring|a roaring lion", "animal", "c"),
    _c("deer", "a deer bellows", "a deer bellowing|a stag calling", "animal", "c"),
    # people
    _c("male_speech", "a man speaks", "a man speaking|male speech|a man talking", "human"),
    _c("female_speech", "a woman speaks", "a woman speaking|female speech|a woman talking", "human"),
    _c("whispering", "someone whispers", "whispering|a person whispering|hushed whispers", "human"),
    _c("shouting", "someone shouts", "a person shouting|shouting|a loud yell", "human"),
    _c("counting", "someone counts out loud", "a voice counting numbers|counting aloud", "human"),
    _c("laughter", "someone laughs", "laughter|a person laughing|laughing", "human", "c"),
    _c("scream", "someone screams", "a scream|screaming|a person screaming", "human", "c"),
    _c("groan", "someone groans in pain", "a pained groan|grunting in pain", "human", "c"),
    _c("breathing", "someone breathes", "breathing|heavy breathing", "human"),
    _c("footsteps", "footsteps walk by", "footsteps|someone walking|steps on the floor", "human"),
    _c("applause", "people applaud", "applause|an audience clapping|people clapping", "human", "a"),
    _c("crowd", "a crowd cheers", "a cheering crowd|crowd noise|people cheering", "human", "a"),
    _c("heartbeat", "a heart beats", "a heartbeat|heart beating", "human"),
    _c("punch", "someone gets punched", "a punch|a fist hitting|a blow", "human", "c"),
    _c("burp", "someone burps", "a burp|burping", "human", "c"),
    _c("hand_clap", "hands clap", "a hand clap|clapping hands", "human", "c"),
    _c("whistling", "someone whistles a tune", "whistling|a person whistling", "human"),
    _c("typing", "someone types on a keyboard", "keyboard typing|typing|clicking keys", "domestic"),
    # vehicles
    _c("car_engine", "a car engine runs", "a car engine|an engine idling|a motor running", "vehicle", "a"),
    _c("car_passing", "a car drives by", "a car passing by|a passing car", "vehicle", "c"),
    _c("car_crash", "cars crash", "a car crash|a collision", "vehicle", "c"),
    _c("car_horn", "a car horn honks", "a car horn|honking", "vehicle", "c"),
    _c("car_braking", "a car brakes", "tires screeching|car brakes squealing", "vehicle", "c"),
    _c("siren", "a siren wails", "a siren|an emergency siren|a police siren", "vehicle"),
    _c("train", "a train passes", "a train|a passing train|a train on the tracks", "vehicle"),
    _c("train_horn", "a train horn blows", "a train horn|a train whistle", "vehicle", "c"),
    _c("ship_horn", "a ship horn blows", "a ship horn|a foghorn", "vehicle", "c"),
    _c("jet_plane", "a jet plane flies over", "a jet plane|a jet engine roaring|an airplane", "vehicle"),
    _c("helicopter", "a helicopter flies", "a helicopter|helicopter rotors", "vehicle"),
    _c("traffic", "traffic rumbles", "traffic noise|street traffic|cars on a road", "vehicle", "a"),
    # nature
    _c("rain", "rain falls", "rain|rainfall|raindrops", "nature", "a"),
    _c("thunder", "thunder rumbles", "thunder|a thunderclap|a thunderstorm", "nature", "c"),
    _c("wind", "wind blows", "wind|howling wind|a gust of wind", "nature", "a"),
    _c("stream", "water flows in a stream", "a flowing stream|running water|a babbling brook",
       "nature", "a"),
    _c("sea_waves", "waves crash on the shore", "ocean waves|the sea|surf", "nature", "a"),
    _c("fire", "a fire crackles", "a crackling fire|fire burning|a campfire", "nature", "a"),
    _c("bubbles", "water bubbles", "bubbling|bubbles", "nature"),
    _c("splash", "water splashes", "a splash|splashing water", "nature", "c"),
    # domestic, mechanical, tools
    _c("door_slam", "a door slams", "a door slamming|a door shutting", "domestic", "c"),
    _c("door_creak", "a door creaks", "a creaking door|squeaky hinges", "domestic", "c"),
    _c("glass_breaking", "glass shatters", "glass breaking|shattering glass", "domestic", "c"),
    _c("telephone", "a telephone rings", "a phone ringing|a telephone ringing|a ringtone", "domestic"),
    _c("alarm", "an alarm goes off", "an alarm|an alarm clock|an alarm beeping", "domestic"),
    _c("bell", "a bell rings", "a bell|bell ringing|a ringing bell", "domestic", "c"),
    _c("church_bell", "a church bell tolls", "church bells|a tolling bell", "music", "c"),
    _c("wind_chimes", "wind chimes tinkle", "wind chimes|chimes", "music"),
    _c("camera_shutter", "a camera shutter clicks", "a camera shutter|a camera click", "domestic", "c"),
    _c("beep", "an electronic device beeps", "a beep|electronic beeping|a notification sound",
       "domestic", "c"),
    _c("metronome", "a metronome ticks", "a metronome|metronome clicks|a ticking clock", "music"),
    _c("hammering", "someone hammers", "hammering|a hammer striking", "tool", "c"),
    _c("anvil", "a hammer strikes an anvil", "anvil strikes|a blacksmith at work", "tool", "c"),
    _c("sawing", "someone saws wood", "sawing|a saw cutting", "tool"),
    _c("wood_chopping", "an axe chops wood", "wood chopping|an axe hitting wood", "tool", "c"),
    _c("chainsaw", "a chainsaw runs", "a chainsaw|a buzzing chainsaw", "tool"),
    _c("jackhammer", "a jackhammer pounds", "a jackhammer|a pneumatic drill", "tool"),
    _c("machinery", "machinery whirs", "industrial machinery|a factory|machines running", "tool", "a"),
    _c("digging", "someone digs", "digging|a shovel in dirt", "tool", "c"),
    _c("cash_register", "a cash register rings", "a cash register|a till opening", "domestic", "c"),
    _c("vinyl_scratch", "a record scratches", "record scratching|a dj scratch", "music", "c"),
    # weapons and impacts
    _c("gunshot", "a gun fires", "a gunshot|gunfire|a shot", "weapon", "c"),
    _c("machine_gun", "a machine gun fires", "machine gun fire|automatic gunfire", "weapon"),
    _c("explosion", "something explodes", "an explosion|a blast|a boom", "weapon", "c"),
    _c("sword", "swords clash", "swords clashing|metal blades clanging", "weapon", "c"),
    _c("arrow", "an arrow is shot", "a bow shooting|an arrow flying", "weapon", "c"),
    _c("laser", "a laser gun fires", "a laser blast|a sci-fi laser", "weapon", "c"),
    _c("whoosh", "something whooshes past", "a whoosh|a swoosh", "weapon", "c"),
    # music
    _c("piano", "a piano plays", "a piano|piano music|someone playing the piano", "music"),
    _c("electric_piano", "an electric piano plays", "an electric piano|electric piano chords", "music"),
    _c("harpsichord", "a harpsichord plays", "a harpsichord|harpsichord music", "music"),
    _c("organ", "an organ plays", "an organ|organ music", "music"),
    _c("church_organ", "a church organ plays", "a church organ|a pipe organ", "music"),
    _c("accordion", "an accordion plays", "an accordion|accordion music", "music"),
    _c("harmonica", "a harmonica plays", "a harmonica|harmonica music", "music"),
    _c("acoustic_guitar", "an acoustic guitar plays", "an acoustic guitar|guitar strumming", "music"),
    _c("electric_guitar", "an electric guitar plays", "an electric guitar|a distorted guitar", "music"),
    _c("bass_guitar", "a bass guitar plays", "a bass guitar|a bass line", "music"),
    _c("violin", "a violin plays", "a violin|violin music|a fiddle", "music"),
    _c("cello", "a cello plays", "a cello|a bowed cello", "music"),
    _c("strings", "a string section plays", "an orchestra of strings|string ensemble", "music"),
    _c("harp", "a harp plays", "a harp|harp music", "music"),
    _c("choir", "a choir sings", "a choir|choir voices|voices singing", "music"),
    _c("trumpet", "a trumpet plays", "a trumpet|trumpet music", "music"),
    _c("trombone", "a trombone plays", "a trombone|trombone music", "music"),
    _c("tuba", "a tuba plays", "a tuba|tuba music", "music"),
    _c("french_horn", "a french horn plays", "a french horn|horn music", "music"),
    _c("saxophone", "a saxophone plays", "a saxophone|saxophone music|a sax", "music"),
    _c("clarinet", "a clarinet plays", "a clarinet|clarinet music", "music"),
    _c("oboe", "an oboe plays", "an oboe|oboe music", "music"),
    _c("flute", "a flute plays", "a flute|flute music", "music"),
    _c("bagpipes", "bagpipes play", "bagpipes|bagpipe music", "music"),
    _c("xylophone", "a xylophone plays", "a xylophone|a marimba", "music"),
    _c("glockenspiel", "a glockenspiel plays", "a glockenspiel|chiming notes", "music"),
    _c("vibraphone", "a vibraphone plays", "a vibraphone|vibes", "music"),
    _c("music_box", "a music box plays", "a music box|a tinkling music box", "music"),
    _c("banjo", "a banjo plays", "a banjo|banjo picking", "music"),
    _c("sitar", "a sitar plays", "a sitar|sitar music", "music"),
    _c("kalimba", "a kalimba plays", "a kalimba|a thumb piano", "music"),
    _c("synthesizer", "a synthesizer plays", "a synthesizer|synth music|electronic synth tones",
       "music"),
    _c("timpani", "timpani rumble", "timpani|kettle drums", "music", "c"),
    _c("steel_drum", "a steel drum plays", "a steel drum|steel pan music", "music"),
    _c("drum_kit", "drums play a beat", "a drum beat|drums|a drum kit playing", "music"),
    _c("snare_drum", "a snare drum is hit", "a snare drum|a snare hit", "music", "c"),
    _c("bass_drum", "a bass drum thumps", "a bass drum|a kick drum", "music", "c"),
    _c("tom_drum", "a tom drum is hit", "a tom drum|a big drum", "music", "c"),
    _c("cymbal", "a cymbal crashes", "a cymbal|a cymbal crash", "music", "c"),
    _c("hi_hat", "a hi-hat ticks", "a hi-hat|hi-hat hits", "music", "c"),
    _c("cowbell", "a cowbell clanks", "a cowbell|cowbell hits", "music", "c"),
    _c("woodblock", "a woodblock knocks", "a woodblock|wooden knocks", "music", "c"),
    _c("tambourine", "a tambourine jingles", "a tambourine|jingling tambourine", "music", "c"),
    _c("hand_drum", "someone plays hand drums", "bongos|congas|hand drums|tabla", "music", "c"),
    _c("shaker", "a shaker rattles", "a shaker|maracas|a rattle", "music", "c"),
    _c("triangle", "a triangle rings", "a triangle|a triangle ding", "music", "c"),
    _c("whistle", "a whistle blows", "a referee whistle|a whistle blast", "music", "c"),
]

CLASSES: dict[str, SoundClass] = {c.label: c for c in _TABLE}
assert len(CLASSES) == len(_TABLE), "duplicate class label"


def phrases(label: str) -> tuple[str, ...]:
    """All phrases that name `label` in captions (lower case)."""
    return CLASSES[label].phrases()


def names_for(label: str) -> list[str]:
    """Natural-language names of a class, clause first: ["a dog barks", "a dog barking", ...]."""
    return list(CLASSES[label].phrases())
